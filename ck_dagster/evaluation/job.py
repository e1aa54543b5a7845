"""The evaluation job: every target x task of an EvalSpec in one process, then results.json.

``python -m ck_dagster.evaluation.job eval/eval_spec.json`` is what ``eval.slurm`` runs (from the
run directory). Each target's model is loaded once and scored on each of its tasks by inspect-ai
with the ``torchtune/`` provider; logs go to ``<run_dir>/eval/<task>/<label>/logs/``. Progress
lines go to stdout (the SLURM log). ``results.json`` is written last, also when an evaluation
failed; the exit status is then 1 (2 when the spec itself cannot be used).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from inspect_ai import eval as inspect_eval
from inspect_ai.hooks import Hooks, SampleEnd, TaskStart, hooks
from inspect_ai.log import EvalLog
from inspect_ai.model import Model, get_model

from ck_dagster.errors import CkError
from ck_dagster.evaluation.provider import ProviderArgs, is_loaded
from ck_dagster.evaluation.results import (
    EvalOutcome,
    EvalResults,
    checkpoint_fingerprints,
    results_path,
)
from ck_dagster.evaluation.spec import EvalSpec, EvalTarget, TaskSpec
from ck_dagster.evaluation.tasks import load_task
from ck_dagster.settings import set_defaults
from ck_dagster.slurm.script import OFFLINE_ENVIRONMENT

Echo = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


def run_evaluation(spec: EvalSpec, *, echo: Echo = _print) -> EvalResults:
    """Evaluate every (task, target) of ``spec`` and write ``results.json``; returns it.

    A target whose model does not load, or a task that fails, is recorded as failed and the
    job goes on with the rest.
    """
    run_dir = Path(spec.run_dir)
    results_path(run_dir).unlink(missing_ok=True)  # it would describe an older evaluation
    started = _now()
    fingerprints = checkpoint_fingerprints(spec)
    echo(
        f"eval {spec.partition_key}: spec {spec.version}, {len(spec.expected_logs())} "
        f"evaluations on {len(spec.targets)} target(s)"
    )
    outcomes: list[EvalOutcome] = []
    for target in spec.targets:
        outcomes += _evaluate_target(spec, target, echo)
    results = EvalResults(
        partition_key=spec.partition_key,
        spec_version=spec.version,
        checkpoints=fingerprints,
        evaluations=outcomes,
        started=started,
        finished=_now(),
    )
    results.write(run_dir)
    return results


def _evaluate_target(spec: EvalSpec, target: EvalTarget, echo: Echo) -> list[EvalOutcome]:
    """Load the target's model (or reuse the one loaded for the previous target, when they
    share it), apply its adapter, and run each of its tasks on it."""
    prefix = f"eval {spec.partition_key} {target.label}"
    adapter = Path(target.adapter) if target.adapter else None
    args = ProviderArgs(Path(target.path), spec.model, spec.settings.do_sample, adapter)
    loading, reused = time.monotonic(), is_loaded(args)
    try:
        model = get_model(f"torchtune/{target.label}", memoize=False, **args.as_model_args())
    except Exception as exc:  # a checkpoint that does not load fails its evaluations only
        echo(f"{prefix}: FAILED to load {target.checkpoint}: {exc}")
        return [
            EvalOutcome(task=task, label=target.label, status="error", error=str(exc))
            for task in target.tasks
        ]
    what = f"adapter {adapter} on {target.path}" if adapter else target.path
    how = "model already loaded" if reused else "model loaded"
    echo(
        f"{prefix}: {what} ready on {spec.model.device} in "
        f"{time.monotonic() - loading:.1f} s ({how})"
    )
    with model:
        return [_evaluate(spec, target, spec.task(name), model, echo) for name in target.tasks]


def _evaluate(
    spec: EvalSpec, target: EvalTarget, task: TaskSpec, model: Model, echo: Echo
) -> EvalOutcome:
    """Run one task on one loaded target; its log replaces (and sets aside) earlier ones."""
    prefix = f"eval {spec.partition_key} {target.label} {task.name}"
    log_dir = spec.log_dir(task.name, target.label)
    _set_aside_logs(spec, log_dir)
    started = time.monotonic()
    try:
        with Progress(prefix, echo):
            (log,) = inspect_eval(
                load_task(spec, task),
                model=model,
                log_dir=str(log_dir),
                display="none",
                fail_on_error=False,
                log_format="eval",
                **spec.settings.generate_args(),
            )
    except Exception as exc:  # a task that fails to load or run fails this evaluation only
        echo(f"{prefix}: FAILED: {exc}")
        return EvalOutcome(
            task=task.name,
            label=target.label,
            status="error",
            error=str(exc),
            seconds=round(time.monotonic() - started, 3),
        )
    outcome = outcome_from_log(
        log,
        task=task.name,
        label=target.label,
        run_dir=Path(spec.run_dir),
        seconds=round(time.monotonic() - started, 3),
    )
    scores = ", ".join(
        f"{scorer} {name} {value:.3f}"
        for scorer, metrics in outcome.metrics.items()
        for name, value in metrics.items()
    )
    echo(
        f"{prefix}: {outcome.status} in {outcome.seconds:.1f} s, {outcome.completed}/"
        f"{outcome.samples} samples, {outcome.errors} errors: {scores or 'no scores'}"
    )
    return outcome


def outcome_from_log(
    log: EvalLog, *, task: str, label: str, run_dir: Path, seconds: float
) -> EvalOutcome:
    """The scores, counts and errors of one finished inspect log."""
    results = log.results
    errored = [s.error.message for s in log.samples or [] if s.error is not None]
    error = log.error.message if log.error else (errored[0] if errored else None)
    return EvalOutcome(
        task=task,
        label=label,
        status=log.status,
        log=os.path.relpath(log.location, run_dir) if log.location else None,
        metrics={
            score.name: {name: metric.value for name, metric in score.metrics.items()}
            for score in results.scores
        }
        if results
        else {},
        samples=results.total_samples if results else 0,
        completed=results.completed_samples if results else 0,
        errors=len(errored),
        error=error,
        seconds=seconds,
    )


def _set_aside_logs(spec: EvalSpec, log_dir: Path) -> None:
    """Move earlier logs of this evaluation to ``<run_dir>/eval.previous/<time>/``, out of
    ``inspect view``'s way but never deleted."""
    old = sorted(log_dir.glob("*.eval")) if log_dir.is_dir() else []
    if not old:
        return
    target = (
        Path(spec.run_dir)
        / "eval.previous"
        / time.strftime("%Y%m%dT%H%M%S")
        / log_dir.relative_to(spec.eval_dir)
    )
    target.mkdir(parents=True, exist_ok=True)
    for path in old:
        shutil.move(str(path), str(target / path.name))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Progress:
    """Prints ``<prefix>: 20/40 samples, 8.1 samples/s`` each time another tenth of a task's
    samples is done (inspect's own display is off in a batch job)."""

    active: ClassVar[Progress | None] = None

    def __init__(self, prefix: str, echo: Echo) -> None:
        self.prefix, self.echo = prefix, echo
        self.total = self.done = self.reported = 0
        self.started = time.monotonic()

    def __enter__(self) -> Progress:
        Progress.active = self
        return self

    def __exit__(self, *_: object) -> None:
        Progress.active = None

    def start(self, total: int) -> None:
        self.total, self.started = total, time.monotonic()
        self.echo(f"{self.prefix}: 0/{total} samples")

    def sample_done(self) -> None:
        self.done += 1
        step = max(1, self.total // 10)
        if self.done - self.reported >= step or self.done == self.total:
            self.reported = self.done
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            self.echo(f"{self.prefix}: {self.done}/{self.total} samples, {rate:.1f} samples/s")


@hooks(name="ck_dagster_progress", description="Progress lines of ck_dagster's eval job.")
class _ProgressHooks(Hooks):
    """Feeds :class:`Progress` from inspect's task and sample events while one is active."""

    async def on_task_start(self, data: TaskStart) -> None:
        if Progress.active is not None:
            epochs = data.spec.config.epochs or 1
            Progress.active.start((data.spec.dataset.samples or 0) * epochs)

    async def on_sample_end(self, data: SampleEnd) -> None:
        if Progress.active is not None:
            Progress.active.sample_done()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ck_dagster.evaluation.job SPEC...``: 0 when every evaluation succeeded.

    Several specs are evaluated one after another in this process, so runs that share a base
    model (LoRA runs) share its one load."""
    parser = argparse.ArgumentParser(
        prog="python -m ck_dagster.evaluation.job",
        description="Evaluate runs as their eval_spec.json say.",
    )
    parser.add_argument("spec", type=Path, nargs="+", help="a run's eval/eval_spec.json")
    args = parser.parse_args(argv)
    set_defaults(OFFLINE_ENVIRONMENT)  # offline also when run by hand
    try:
        specs = [EvalSpec.read(path) for path in args.spec]
    except CkError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    status = 0
    for spec in specs:
        try:
            results = run_evaluation(spec)
        except CkError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            status = 2
            continue
        failed = [o for o in results.evaluations if not o.ok]
        if failed:
            print(
                f"error: {len(failed)} of {len(results.evaluations)} evaluations failed:\n"
                + "\n".join(
                    f"  {o.task} on {o.label}: {o.status}, {o.errors} errored samples: {o.error}"
                    for o in failed
                ),
                file=sys.stderr,
                flush=True,
            )
            status = status or 1
            continue
        print(
            f"eval {results.partition_key}: all {len(results.evaluations)} evaluations "
            f"succeeded -> {results_path(Path(spec.run_dir))}",
            flush=True,
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
