"""Training jobs: one ``tune run`` job per fine-tuned run, submitted from its finetune.slurm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ck_dagster.errors import CkError
from ck_dagster.finetune.plan import RunPlan
from ck_dagster.slurm.runner import Attempt, JobRequest, Resubmission
from ck_dagster.slurm.states import JobState, format_duration, parse_duration
from ck_dagster.training.artifacts import (
    EpochCheckpoint,
    TrainingLog,
    compare_configs,
    config_differences,
    epoch_checkpoints,
    is_complete,
    read_training_log,
    set_aside,
)
from ck_dagster.training.resume import ResumePoint, resume_point, without_resume

#: the finetune.yaml the run's latest job was submitted with (a job reads its config when it
#: starts; this says what a queued or running job trains, after the run was edited).
SUBMITTED_CONFIG = "finetune.submitted.yaml"


def training_request(plan: RunPlan, *, retrain: bool = False) -> JobRequest:
    """The job that trains ``plan``'s run: adopted when its epochs are all saved already,
    trained with the run's current config."""
    assert plan.job is not None and plan.config is not None, "control runs are not trained"
    artifacts, config = plan.artifacts_dir, plan.config.config

    def is_done() -> bool:
        return is_complete(artifacts, plan.saved_epochs) and not config_differences(
            artifacts, config
        )

    def before_submit() -> None:
        check_run_files(plan)
        differences = config_differences(artifacts, config)
        moved = set_aside(artifacts)
        if moved is not None:
            why = (
                ""
                if not differences
                else (
                    f", trained with another config ({', '.join(differences[:5])}"
                    f"{', ...' if len(differences) > 5 else ''})"
                )
            )
            notes.append(f"earlier checkpoints kept in {moved}{why}")
        artifacts.mkdir(parents=True, exist_ok=True)
        submitted.write_text(plan.finetune_yaml)

    def changes_since_submitted() -> list[str]:
        try:
            before = yaml.safe_load(submitted.read_text())
        except (OSError, yaml.YAMLError):
            return []  # submitted by hand or by an older version: cannot tell
        return compare_configs(before, config) if isinstance(before, dict) else []

    def oom_retry_args() -> list[str] | None:
        return halved_batch_args(plan.config.config if plan.config else {})

    def resubmission(state: JobState, attempt: Attempt) -> Resubmission | None:
        return resubmission_after(plan, state, attempt)

    def resume_first() -> Resubmission | None:
        point = None if retrain else current_resume_point(plan)
        if point is None:
            return None
        check_run_files(plan)
        submitted.write_text(plan.finetune_yaml)
        return Resubmission(point.args(()), None, point.describe())

    submitted = plan.run_dir / SUBMITTED_CONFIG
    notes: list[str] = []
    return JobRequest(
        key=plan.partition_key,
        script=plan.run_dir / "finetune.slurm",
        job_name=plan.job.job_name,
        is_done=is_done,
        before_submit=before_submit,
        oom_retry_args=oom_retry_args,
        force=retrain,
        notes=notes,
        verb="trained",
        changes_since_submitted=changes_since_submitted,
        log_folder=artifacts,
        resubmission=resubmission,
        resume_first=resume_first,
    )


def resubmission_after(plan: RunPlan, state: JobState, attempt: Attempt) -> Resubmission | None:
    """How a run whose job was stopped goes on: from its last saved epoch when one was saved
    with the current config (never from scratch then), else from the start; after a TIMEOUT
    with twice the time, up to the profile's ``max_time`` (from the start only when that gives
    more time: the same job would run out of time again)."""
    time = attempt.time
    if state is JobState.TIMEOUT:
        time = longer_time(attempt.time or plan.resources.time, plan.max_time) or time
    point = current_resume_point(plan)
    if point is not None:
        return Resubmission(point.args(attempt.args), time, point.describe())
    if state is JobState.TIMEOUT and time == attempt.time:
        return None
    return Resubmission(without_resume(attempt.args), time)


def current_resume_point(plan: RunPlan) -> ResumePoint | None:
    """Where the run's training can go on from its saved epochs, when they were trained with
    its current config."""
    assert plan.config is not None, "control runs are not trained"
    if config_differences(plan.artifacts_dir, plan.config.config):
        return None
    return resume_point(plan.artifacts_dir, plan.epochs)


def longer_time(current: str, limit: str | None) -> str | None:
    """Twice ``current``, capped at ``limit``; None when ``limit`` gives no more (or is unset)."""
    now, most = parse_duration(current), parse_duration(limit) if limit else None
    if now is None or most is None or most <= now:
        return None
    return format_duration(min(2 * now, most))


def halved_batch_args(config: dict[str, Any]) -> list[str] | None:
    """torchtune overrides with a smaller batch and more accumulation, keeping the effective
    batch (batch x accumulation): the batch is divided by its smallest prime factor (halved
    when even, 5 -> 1 x 5), or None when it is 1 already."""
    batch = int(config.get("batch_size", 1))
    accumulation = int(config.get("gradient_accumulation_steps", 1) or 1)
    if batch < 2:
        return None
    factor = next(f for f in range(2, batch + 1) if batch % f == 0)
    return [f"batch_size={batch // factor}", f"gradient_accumulation_steps={accumulation * factor}"]


def check_run_files(plan: RunPlan) -> None:
    """Refuse to train from files that are missing or differ from the registered config."""
    for name, expected in (
        ("finetune.yaml", plan.finetune_yaml),
        ("finetune.slurm", plan.slurm_script),
    ):
        path = plan.run_dir / name
        if not path.is_file():
            raise CkError(
                f"{path} does not exist: materialize run_config for {plan.partition_key} first"
            )
        if path.read_text() != expected:
            raise CkError(
                f"{path} differs from the registered config of {plan.partition_key} "
                "(edited by hand?): materialize run_config again to rewrite it"
            )


@dataclass(frozen=True)
class TrainedCheckpoint:
    """What a finished training left behind, for metadata."""

    artifacts: Path
    epochs: list[EpochCheckpoint]
    log: TrainingLog


def describe(plan: RunPlan) -> TrainedCheckpoint:
    """Read back the checkpoints and loss log of a run whose job completed (or was adopted)."""
    return TrainedCheckpoint(
        plan.artifacts_dir,
        epoch_checkpoints(plan.artifacts_dir),
        read_training_log(plan.artifacts_dir),
    )
