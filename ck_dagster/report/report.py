"""The experiment report: runs x epochs x tasks, with varied parameters, loss and scores.

Scores are proportions of samples scored correct, so their 95% interval is Wilson's (sound at
0 and 1 and for the few dozen samples an eval split often has). Written as CSV and a PNG plot
(score by epoch, one line per run) and shown as Markdown.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
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


@dataclass(frozen=True)
class ScoreRow:
    """One run x epoch x task x metric: the score and what the run varied."""

    run: str
    run_type: str
    label: str  # "epoch_<N>" or "base"
    task: str
    metric: str
    score: float
    samples: int
    parameters: dict[str, Any] = field(default_factory=dict)
    final_loss: float | None = None

    @property
    def epoch(self) -> int | None:
        return int(self.label.removeprefix("epoch_")) if self.label.startswith("epoch_") else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.score * self.samples, self.samples)


@dataclass
class Report:
    """The report of one experiment."""

    experiment: str
    rows: list[ScoreRow]
    varied: list[str]
    #: how the plot names runs (``evaluation.matrix[].vis_label``); the run name otherwise.
    labels: dict[str, str] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """Rows as flat records: run, parameters, epoch, task, metric, score, 95% CI, loss."""
        records = []
        for row in self._sorted():
            low, high = row.interval
            records.append({
                "run": row.run, "type": row.run_type,
                **{name: row.parameters.get(name, "") for name in self.varied},
                "epoch": row.label, "task": row.task, "metric": row.metric,
                "score": round(row.score, 4), "ci95_low": round(low, 4),
                "ci95_high": round(high, 4), "samples": row.samples,
                "final_loss": "" if row.final_loss is None else round(row.final_loss, 4),
            })
        return records

    def csv(self) -> str:
        """The table as CSV text."""
        records = self.table()
        out = io.StringIO()
        if records:
            writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
        return out.getvalue()

    def markdown(self) -> str:
        """The table as Markdown (scores with their 95% interval)."""
        records = self.table()
        if not records:
            return f"### {self.experiment}\n\nNo evaluations yet.\n"
        columns = ["run", "type", *self.varied, "epoch", "task", "metric", "score (95% CI)",
                   "samples", "final_loss"]
        lines = [f"### {self.experiment}", "", "| " + " | ".join(columns) + " |",
                 "|" + "---|" * len(columns)]
        for record in records:
            score = f"{record['score']:.3f} ({record['ci95_low']:.3f}-{record['ci95_high']:.3f})"
            cells = [record["run"], record["type"], *(record[n] for n in self.varied),
                     record["epoch"], record["task"], record["metric"], score,
                     record["samples"], record["final_loss"]]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        return "\n".join(lines) + "\n"

    def plot_png(self) -> bytes:
        """The plot (:meth:`figure`) as PNG."""
        from matplotlib import pyplot as plt

        figure = self.figure()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
        return buffer.getvalue()

    def figure(self) -> Any:
        """Score by epoch, one line per run and panel per task/metric; control runs dashed.
        (A matplotlib Figure; close it with ``pyplot.close``.)"""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        panels = sorted({(r.task, r.metric) for r in self.rows})
        figure, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4),
                                    squeeze=False)
        epochs = sorted({r.epoch for r in self.rows if r.epoch is not None}) or [0]
        for axis, (task, metric) in zip(axes[0], panels):
            for run in sorted({r.run for r in self.rows}):
                mine = [r for r in self.rows if (r.run, r.task, r.metric) == (run, task, metric)]
                if mine and mine[0].run_type == "control":
                    axis.axhline(mine[0].score, linestyle="--", color="grey",
                                 label=f"{self.labels.get(run, run)} (base model)")
                    continue
                points = sorted((r.epoch, r) for r in mine if r.epoch is not None)
                if not points:
                    continue
                xs = [e for e, _ in points]
                ys = [r.score for _, r in points]
                low = [r.score - r.interval[0] for _, r in points]
                high = [r.interval[1] - r.score for _, r in points]
                axis.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3,
                              label=self.labels.get(run, run))
            axis.set(title=f"{self.experiment}: {task}", xlabel="epoch", ylabel=metric,
                     ylim=(-0.02, 1.02), xticks=epochs)
            axis.legend(fontsize="small")
        figure.tight_layout()
        return figure

    def write(self, folder: Path) -> dict[str, Path]:
        """Write ``report.csv``, ``scores.png`` and ``report.md`` into ``folder``."""
        paths = {"csv": folder / "report.csv", "png": folder / "scores.png",
                 "markdown": folder / "report.md"}
        atomic_write_text(paths["csv"], self.csv())
        atomic_write_bytes(paths["png"], self.plot_png())
        atomic_write_text(paths["markdown"], self.markdown())
        return paths

    def _sorted(self) -> list[ScoreRow]:
        return sorted(self.rows, key=lambda r: (r.run_type != "control", r.run, r.task,
                                                r.metric, r.epoch if r.epoch is not None else -1))


def varied_parameters(parameters_by_run: Sequence[dict[str, Any]]) -> list[str]:
    """The parameter names whose values differ between runs (what the experiment varies)."""
    names: dict[str, None] = {}
    for parameters in parameters_by_run:
        names.update(dict.fromkeys(parameters))
    return [name for name in names
            if len({repr(p.get(name)) for p in parameters_by_run}) > 1]


def build_report(experiment: str, rows: Iterable[ScoreRow], *,
                 variables: Sequence[str] | None = None,
                 labels: dict[str, str] | None = None) -> Report:
    """A report over ``rows``: its columns are the experiment's ``variables`` when it lists
    them, else the parameters that vary between its fine-tuned runs."""
    rows = list(rows)
    by_run = {row.run: row.parameters for row in rows if row.run_type != "control"}
    varied = list(variables) if variables else varied_parameters(list(by_run.values()))
    return Report(experiment, rows, varied, dict(labels or {}))
