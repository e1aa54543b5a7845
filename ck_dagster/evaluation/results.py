"""``<run_dir>/eval/results.json``: what an evaluation job scored, and whether it still holds.

The job writes it last, atomically. Finished evaluations are adopted instead of re-run while
:func:`is_current` says the spec, the checkpoint files and every log are as they were.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ck_dagster.errors import CkError
from ck_dagster.evaluation.spec import EVAL_DIR, RESULTS_FILE, SPEC_FILE, EvalSpec
from ck_dagster.fileio import atomic_write_text

#: the fingerprint of a target folder that does not exist.
MISSING = "missing"


class EvalOutcome(BaseModel):
    """One task on one target: its log, scores and sample counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    label: str
    #: inspect's log status (``success``, ``error``, ``cancelled``), or ``error`` when the
    #: evaluation could not start (the model or task did not load).
    status: str
    #: the ``.eval`` log, relative to the run directory (None when none was written).
    log: str | None = None
    #: scorer -> metric -> value, e.g. ``{"match": {"accuracy": 0.9, "stderr": 0.03}}``.
    metrics: dict[str, dict[str, float]] = {}
    #: samples the task has (times epochs); ``completed`` of them were scored.
    samples: int = 0
    completed: int = 0
    #: samples that raised an error (the evaluation went on without them).
    errors: int = 0
    #: why the evaluation failed, or the first sample error.
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Finished, with every sample scored and none errored."""
        return self.status == "success" and self.errors == 0 and self.completed == self.samples

    @property
    def accuracy(self) -> float | None:
        """The first scorer's accuracy (the built-in task's: case-sensitive exact match)."""
        return next((m["accuracy"] for m in self.metrics.values() if "accuracy" in m), None)


class EvalResults(BaseModel):
    """Everything one evaluation job did, as ``results.json`` holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition_key: str
    #: the ``EvalSpec.version`` the job ran.
    spec_version: str
    #: label -> fingerprint of the target folder's files when the job evaluated them.
    checkpoints: dict[str, str]
    evaluations: list[EvalOutcome]
    started: str
    finished: str

    @property
    def ok(self) -> bool:
        return all(outcome.ok for outcome in self.evaluations)

    def outcome(self, task: str, label: str) -> EvalOutcome | None:
        """The outcome of ``task`` on target ``label``, if the job evaluated it."""
        return next((o for o in self.evaluations if (o.task, o.label) == (task, label)), None)

    def write(self, run_dir: Path) -> None:
        """Write ``<run_dir>/eval/results.json`` atomically."""
        atomic_write_text(results_path(run_dir), self.model_dump_json(indent=2) + "\n")


def results_path(run_dir: Path) -> Path:
    return Path(run_dir) / EVAL_DIR / RESULTS_FILE


def read_results(run_dir: Path) -> EvalResults | None:
    """The run's ``results.json``, or None when no evaluation job has finished."""
    path = results_path(run_dir)
    try:
        return EvalResults.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        raise CkError(
            f"{path}: not readable as evaluation results ({exc}); delete it and "
            "materialize eval_log again"
        ) from None


def checkpoint_fingerprint(folder: Path) -> str:
    """A hash of the names, sizes and mtimes of every file under ``folder`` (hidden ones left
    out): it changes when a checkpoint is rewritten, and costs one stat per file."""
    if not folder.is_dir():
        return MISSING
    lines = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = path.stat()
            lines.append(f"{relative.as_posix()}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def checkpoint_fingerprints(spec: EvalSpec) -> dict[str, str]:
    """Every target's fingerprint, by label."""
    return {
        target.label: checkpoint_fingerprint(Path(target.checkpoint)) for target in spec.targets
    }


def is_current(run_dir: Path, spec: EvalSpec) -> bool:
    """Whether ``results.json`` still describes ``spec``: same version, same checkpoint files,
    and every expected evaluation finished cleanly with its log in place."""
    try:
        results = read_results(run_dir)
    except CkError:
        return False
    if (
        results is None
        or results.spec_version != spec.version
        or results.checkpoints != checkpoint_fingerprints(spec)
    ):
        return False
    for task, label in spec.expected_logs():
        outcome = results.outcome(task, label)
        if (
            outcome is None
            or not outcome.ok
            or outcome.log is None
            or not (Path(run_dir) / outcome.log).is_file()
        ):
            return False
    return True


def stale_reason(run_dir: Path, registered_version: str) -> str | None:
    """Why a run's evaluation must run again, or None while its results are current for the
    registered evaluation: never evaluated, evaluation changed (settings, tasks, task code,
    data, tokenizer), checkpoint changed, or failed or incomplete."""
    spec_path = Path(run_dir) / EVAL_DIR / SPEC_FILE
    try:
        results = read_results(run_dir)
        spec = EvalSpec.read(spec_path) if results is not None and spec_path.is_file() else None
    except CkError:
        return "results unreadable"
    if results is None or spec is None:
        return "never evaluated"
    if not registered_version == spec.version == results.spec_version:
        return "evaluation changed"
    if results.checkpoints != checkpoint_fingerprints(spec):
        return "checkpoint changed"
    return None if is_current(run_dir, spec) else "failed or incomplete"


def result_problems(results: EvalResults, spec: EvalSpec) -> list[str]:
    """What is wrong with finished results, one line each (empty when nothing is): pairs not
    evaluated or failed, errored samples, and built-in tasks that did not score every test row."""
    problems = []
    for task, label in spec.expected_logs():
        where = f"{task} on {label}"
        outcome = results.outcome(task, label)
        if outcome is None:
            problems.append(f"{where}: not evaluated")
            continue
        if outcome.status != "success":
            problems.append(f"{where}: evaluation {outcome.status}: {outcome.error}")
            continue
        if outcome.errors:
            problems.append(
                f"{where}: {outcome.errors} of {outcome.samples} samples errored "
                f"(first: {outcome.error})"
            )
        expected = spec.data.rows if spec.task(task).is_builtin else outcome.samples
        if outcome.completed != expected:
            problems.append(
                f"{where}: {outcome.completed} samples scored, but "
                + (
                    f"the {spec.data.split} split has {expected} rows"
                    if spec.task(task).is_builtin
                    else f"the task has {expected}"
                )
            )
    return problems
