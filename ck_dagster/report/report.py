"""The report of one experiment: runs x epochs of the primary metric, losses, paired tests.

Scores are proportions of samples scored correct, so their 95% interval is Wilson's (sound at
0 and 1 and for the few dozen samples an eval split often has). Every run is scored on the same
samples, so each fine-tuned run is compared with the control and with the best run on the
samples both scored: McNemar's exact test on the samples where exactly one of the two is right.
Written as CSV and a PNG plot (score by epoch, one line per run; loss by epoch) and shown as
Markdown with the plot inline.
"""

from __future__ import annotations

import base64
import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ck_dagster.fileio import atomic_write_bytes, atomic_write_text

Z_95 = 1.959964


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``(0, 1)`` when there are no samples)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """The two-sided exact McNemar p-value from the discordant pairs: the binomial test of
    ``only_first`` successes in ``only_first + only_second`` trials at 1/2 (1 when none)."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class ScoreRow:
    """One run x epoch x task x metric: the score, what the run varied, its losses then."""

    run: str
    run_type: str
    label: str  # "epoch_<N>" or "base"
    task: str
    metric: str
    score: float
    samples: int
    parameters: dict[str, Any] = field(default_factory=dict)
    #: the training loss logged last in this epoch, and the validation loss of this epoch.
    train_loss: float | None = None
    val_loss: float | None = None
    #: each sample's score (sample id -> value), for paired comparisons; empty if unknown.
    per_sample: Mapping[str, float] = field(default_factory=dict, compare=False, repr=False)

    @property
    def epoch(self) -> int | None:
        return int(self.label.removeprefix("epoch_")) if self.label.startswith("epoch_") else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.score * self.samples, self.samples)

    @property
    def is_control(self) -> bool:
        return self.run_type == "control"

    def cell(self) -> str:
        """``0.860 [0.78, 0.92]``: the score with its 95% interval."""
        low, high = self.interval
        return f"{self.score:.3f} [{low:.2f}, {high:.2f}]"


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two runs on the samples both scored (primary metric)."""

    task: str
    run: str
    label: str
    other: str
    other_label: str
    #: what the other run is: ``control`` or ``best run``.
    role: str
    paired: int
    #: mean score of ``run`` minus that of ``other`` over the paired samples.
    difference: float | None
    only_run: int | None
    only_other: int | None
    p_value: float | None
    note: str = ""

    def record(self) -> dict[str, Any]:
        """As a flat record (CSV)."""
        return {
            "task": self.task,
            "run": self.run,
            "epoch": self.label,
            "vs": self.role,
            "other": self.other,
            "other_epoch": self.other_label,
            "paired": self.paired,
            "difference": _rounded(self.difference),
            "only_run_right": self.only_run,
            "only_other_right": self.only_other,
            "p_mcnemar": _rounded(self.p_value, 6),
            "note": self.note,
        }


def compare(row: ScoreRow, other: ScoreRow, role: str) -> Comparison:
    """Compare two rows on their common samples; McNemar's exact test when scores are 0/1."""
    common = sorted(set(row.per_sample) & set(other.per_sample))
    base = dict(
        task=row.task,
        run=row.run,
        label=row.label,
        other=other.run,
        other_label=other.label,
        role=role,
        paired=len(common),
    )
    if not common:
        return Comparison(
            **base,
            difference=None,
            only_run=None,
            only_other=None,
            p_value=None,
            note="no per-sample scores in common",
        )
    mine = [row.per_sample[s] for s in common]
    theirs = [other.per_sample[s] for s in common]
    difference = (sum(mine) - sum(theirs)) / len(common)
    if not all(v in (0.0, 1.0) for v in mine + theirs):
        return Comparison(
            **base,
            difference=difference,
            only_run=None,
            only_other=None,
            p_value=None,
            note="scores are not 0/1: no McNemar test",
        )
    only_run = sum(1 for a, b in zip(mine, theirs) if a > b)
    only_other = sum(1 for a, b in zip(mine, theirs) if b > a)
    return Comparison(
        **base,
        difference=difference,
        only_run=only_run,
        only_other=only_other,
        p_value=mcnemar_exact(only_run, only_other),
    )


@dataclass
class Report:
    """The report of one experiment."""

    experiment: str
    rows: list[ScoreRow]
    varied: list[str]
    #: how the plot names runs (``evaluation.matrix[].vis_label``); the run name otherwise.
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(row.task for row in self.rows))

    def primary_metric(self, task: str) -> str:
        """The task's first metric (its first scorer's), the one tables and tests use."""
        return next(row.metric for row in self.rows if row.task == task)

    def primary_rows(self, task: str) -> list[ScoreRow]:
        """The task's rows of its primary metric, controls first, then by run and epoch."""
        metric = self.primary_metric(task)
        return self._sorted([r for r in self.rows if (r.task, r.metric) == (task, metric)])

    def best_rows(self, task: str) -> dict[str, ScoreRow]:
        """Each run's best row on the task's primary metric (the earliest epoch on ties)."""
        best: dict[str, ScoreRow] = {}
        for row in self.primary_rows(task):
            if row.run not in best or row.score > best[row.run].score:
                best[row.run] = row
        return best

    def comparisons(self) -> list[Comparison]:
        """Each fine-tuned run's best epoch against the control and against the best run."""
        found = []
        for task in self.tasks:
            best = self.best_rows(task)
            controls = [row for row in best.values() if row.is_control]
            tuned = [row for row in best.values() if not row.is_control]
            leader = max(tuned, key=lambda r: r.score, default=None)
            for row in tuned:
                found += [compare(row, control, "control") for control in controls[:1]]
                if leader is not None and row.run != leader.run:
                    found.append(compare(row, leader, "best run"))
        return found

    def table(self) -> list[dict[str, Any]]:
        """Rows as flat records: run, parameters, epoch, task, metric, score, 95% CI, losses."""
        records = []
        for row in self._sorted(self.rows):
            low, high = row.interval
            records.append(
                {
                    "run": row.run,
                    "type": row.run_type,
                    **{name: row.parameters.get(name, "") for name in self.varied},
                    "epoch": row.label,
                    "task": row.task,
                    "metric": row.metric,
                    "score": round(row.score, 4),
                    "ci95_low": round(low, 4),
                    "ci95_high": round(high, 4),
                    "samples": row.samples,
                    "train_loss": _rounded(row.train_loss),
                    "val_loss": _rounded(row.val_loss),
                }
            )
        return records

    def csv(self) -> str:
        """The table as CSV text."""
        return _csv(self.table())

    def comparisons_csv(self) -> str:
        """The paired comparisons as CSV text."""
        return _csv([c.record() for c in self.comparisons()])

    def markdown(self, plot: bytes | None = None) -> str:
        """Per task: runs x epochs of the primary metric with the best epoch, losses beside,
        the paired comparisons; then ``plot`` inline (a base64 PNG) when given."""
        lines = [f"## {self.experiment}", ""]
        if not self.rows:
            return "\n".join(lines + ["No evaluations yet.", ""])
        comparisons = self.comparisons()
        for task in self.tasks:
            lines += [
                f"### {task}: {self.primary_metric(task)} (95% CI)",
                "",
                *self._score_table(task),
                "",
            ]
            losses = self._loss_table(task)
            if losses:
                lines += ["Loss at the end of each epoch (training / validation):", "", *losses, ""]
            mine = [c for c in comparisons if c.task == task]
            if mine:
                lines += [
                    "Paired on the same samples (McNemar's exact test; difference = "
                    "run minus other):",
                    "",
                    *_comparison_table(mine),
                    "",
                ]
        if plot is not None:
            encoded = base64.b64encode(plot).decode()
            lines += [f"![scores of {self.experiment}](data:image/png;base64,{encoded})", ""]
        return "\n".join(lines)

    def _score_table(self, task: str) -> list[str]:
        rows = self.primary_rows(task)
        epochs = sorted({r.epoch for r in rows if r.epoch is not None})
        columns = ["run", *self.varied, *(f"epoch {e}" for e in epochs), "best"]
        lines = _header(columns)
        best = self.best_rows(task)
        for run in dict.fromkeys(r.run for r in rows):
            mine = {r.epoch: r for r in rows if r.run == run}
            top = best[run]
            cells = [
                run + (" (control)" if top.is_control else ""),
                *(top.parameters.get(name, "") for name in self.varied),
                *(mine[e].cell() if e in mine else "" for e in epochs),
                (f"{top.label}: " if top.epoch is not None else "base model: ")
                + f"{top.score:.3f}",
            ]
            lines.append(_row(cells))
        return lines

    def _loss_table(self, task: str) -> list[str]:
        rows = [r for r in self.primary_rows(task) if not r.is_control]
        if not any(r.train_loss is not None or r.val_loss is not None for r in rows):
            return []
        epochs = sorted({r.epoch for r in rows if r.epoch is not None})
        lines = _header(["run", *(f"epoch {e}" for e in epochs)])
        for run in dict.fromkeys(r.run for r in rows):
            mine = {r.epoch: r for r in rows if r.run == run}
            lines.append(_row([run, *(_losses(mine[e]) if e in mine else "" for e in epochs)]))
        return lines

    def plot_png(self) -> bytes:
        """The plot (:meth:`figure`) as PNG."""
        from matplotlib import pyplot as plt

        figure = self.figure()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        plt.close(figure)
        return buffer.getvalue()

    def figure(self) -> Any:
        """Primary metric by epoch with its interval, a panel per task, control runs dashed;
        a last panel of the losses by epoch when any was logged. (A matplotlib Figure; close
        it with ``pyplot.close``.)"""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        tasks = self.tasks
        has_loss = any(r.train_loss is not None or r.val_loss is not None for r in self.rows)
        panels = max(1, len(tasks)) + has_loss
        figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), squeeze=False)
        epochs = sorted({r.epoch for r in self.rows if r.epoch is not None}) or [0]
        for axis, task in zip(axes[0], tasks):
            rows = self.primary_rows(task)
            for run in dict.fromkeys(r.run for r in rows):
                mine = [r for r in rows if r.run == run]
                if mine[0].is_control:
                    axis.axhline(
                        mine[0].score,
                        linestyle="--",
                        color="grey",
                        label=f"{self.labels.get(run, run)} (base model)",
                    )
                    continue
                points = sorted((r.epoch, r) for r in mine if r.epoch is not None)
                axis.errorbar(
                    [e for e, _ in points],
                    [r.score for _, r in points],
                    yerr=[
                        [r.score - r.interval[0] for _, r in points],
                        [r.interval[1] - r.score for _, r in points],
                    ],
                    marker="o",
                    capsize=3,
                    label=self.labels.get(run, run),
                )
            axis.set(
                title=f"{self.experiment}: {task}",
                xlabel="epoch",
                ylabel=self.primary_metric(task),
                ylim=(-0.02, 1.02),
                xticks=epochs,
            )
            axis.legend(fontsize="small")
        if has_loss:
            self._plot_losses(axes[0][-1], epochs)
        figure.tight_layout()
        return figure

    def _plot_losses(self, axis: Any, epochs: list[int]) -> None:
        rows = [r for r in self.primary_rows(self.tasks[0]) if not r.is_control]
        for run in dict.fromkeys(r.run for r in rows):
            points = sorted((r.epoch, r) for r in rows if r.run == run and r.epoch is not None)
            line = axis.plot(
                [e for e, r in points if r.train_loss is not None],
                [r.train_loss for _, r in points if r.train_loss is not None],
                marker="o",
                label=f"{self.labels.get(run, run)} training",
            )
            if any(r.val_loss is not None for _, r in points):
                axis.plot(
                    [e for e, r in points if r.val_loss is not None],
                    [r.val_loss for _, r in points if r.val_loss is not None],
                    marker="s",
                    linestyle="--",
                    color=line[0].get_color(),
                    label=f"{self.labels.get(run, run)} validation",
                )
        axis.set(title=f"{self.experiment}: loss", xlabel="epoch", ylabel="loss", xticks=epochs)
        axis.legend(fontsize="small")

    def write(self, folder: Path) -> dict[str, Path]:
        """Write ``report.csv``, ``comparisons.csv``, ``scores.png`` and ``report.md`` (which
        links the PNG beside it) into ``folder``."""
        paths = {
            "csv": folder / "report.csv",
            "comparisons": folder / "comparisons.csv",
            "png": folder / "scores.png",
            "markdown": folder / "report.md",
        }
        atomic_write_text(paths["csv"], self.csv())
        atomic_write_text(paths["comparisons"], self.comparisons_csv())
        atomic_write_bytes(paths["png"], self.plot_png())
        atomic_write_text(
            paths["markdown"], self.markdown() + f"\n![scores of {self.experiment}](scores.png)\n"
        )
        return paths

    @staticmethod
    def _sorted(rows: Iterable[ScoreRow]) -> list[ScoreRow]:
        return sorted(
            rows,
            key=lambda r: (
                not r.is_control,
                r.run,
                r.task,
                r.metric,
                r.epoch if r.epoch is not None else -1,
            ),
        )


def losses_by_epoch(
    steps: Sequence[Mapping[str, float]], epochs: int
) -> dict[int, tuple[float | None, float | None]]:
    """Epoch -> (training loss, validation loss) logged last in that epoch, from torchtune's
    metric log rows (``step``, ``loss``, ``val_loss``...). Every epoch has as many steps, so
    epoch ``e`` ends at step ``(e + 1) * last_step / epochs``."""
    if epochs <= 0 or not steps:
        return {}
    last_step = max(row["step"] for row in steps) or 1
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for row in sorted(steps, key=lambda r: r["step"]):
        epoch = min(epochs - 1, max(0, math.ceil(row["step"] * epochs / last_step) - 1))
        if "loss" in row:
            train[epoch] = row["loss"]
        for name in VALIDATION_LOSS_KEYS:
            if name in row:
                val[epoch] = row[name]
    return {epoch: (train.get(epoch), val.get(epoch)) for epoch in sorted({*train, *val})}


#: the names validation loss has in torchtune's metric logs.
VALIDATION_LOSS_KEYS = ("val_loss", "validation_loss")


def varied_parameters(parameters_by_run: Sequence[dict[str, Any]]) -> list[str]:
    """The parameter names whose values differ between runs (what the experiment varies)."""
    names: dict[str, None] = {}
    for parameters in parameters_by_run:
        names.update(dict.fromkeys(parameters))
    return [name for name in names if len({repr(p.get(name)) for p in parameters_by_run}) > 1]


def build_report(
    experiment: str,
    rows: Iterable[ScoreRow],
    *,
    variables: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
) -> Report:
    """A report over ``rows``: its columns are the experiment's ``variables`` when it lists
    them, else the parameters that vary between its fine-tuned runs."""
    rows = list(rows)
    by_run = {row.run: row.parameters for row in rows if not row.is_control}
    varied = list(variables) if variables else varied_parameters(list(by_run.values()))
    return Report(experiment, rows, varied, dict(labels or {}))


def _losses(row: ScoreRow) -> str:
    train = "" if row.train_loss is None else f"{row.train_loss:.3f}"
    return train + ("" if row.val_loss is None else f" / {row.val_loss:.3f}")


def _comparison_table(comparisons: Sequence[Comparison]) -> list[str]:
    lines = _header(
        [
            "run",
            "vs",
            "difference",
            "only run right",
            "only other right",
            "p (McNemar)",
            "paired samples",
        ]
    )
    for c in comparisons:
        other = f"{c.role}: {c.other}" + (f" {c.other_label}" if c.other_label != "base" else "")
        difference = "" if c.difference is None else f"{c.difference:+.3f}"
        p_value = c.note if c.p_value is None else f"{c.p_value:.3g}"
        lines.append(
            _row(
                [
                    f"{c.run} {c.label}",
                    other,
                    difference,
                    "" if c.only_run is None else c.only_run,
                    "" if c.only_other is None else c.only_other,
                    p_value,
                    c.paired,
                ]
            )
        )
    return lines


def _header(columns: Sequence[str]) -> list[str]:
    return [_row(columns), "|" + "---|" * len(columns)]


def _row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _rounded(value: float | None, digits: int = 4) -> float | str:
    return "" if value is None else round(value, digits)


def _csv(records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    if records:
        writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    return out.getvalue()
