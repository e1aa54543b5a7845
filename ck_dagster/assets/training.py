"""The ``checkpoint`` asset: each fine-tuned run trained by a SLURM job running ``tune run``.

One step follows every job of a backfill (one status call per cycle for all of them); the jobs
in the queue are capped by the launcher's concurrency pool. Each run is recorded as soon as its
own job ends, not when the step does, so a quick run of a sweep is evaluated without waiting for
the slowest (``PartitionRecords``; in a Dagster run that also materializes ``eval_log``, its
evaluation job starts then too, ``assets.eval_jobs``). Control runs resolve to their base model
without a job, so their evaluations have the same lineage as every other run's.
"""

from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from ck_dagster.assets.configs import plans_for, run_config
from ck_dagster.assets.eval_jobs import EarlyEvaluations
from ck_dagster.assets.launcher import LauncherResource, PartitionRecords
from ck_dagster.assets.partitions import runs_partitions
from ck_dagster.assets.progress import ProgressObservations
from ck_dagster.assets.resources import JobEnvironmentResource
from ck_dagster.finetune.plan import RunPlan, preflight_runs
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.preflight import summarize
from ck_dagster.slurm.runner import JobOutcome
from ck_dagster.training.progress import training_progress
from ck_dagster.training.submit import describe, training_request

MAX_CURVE_ROWS = 200


class CheckpointConfig(Config):
    """Options for materializing checkpoints."""

    retrain: bool = Field(
        default=False,
        description="Train again even when every epoch is saved already. The old checkpoints "
        "are moved to artifacts.previous-<time>/, never deleted.",
    )


@asset(
    partitions_def=runs_partitions,
    deps=[run_config],
    backfill_policy=BackfillPolicy.single_run(),
    group_name="training",
    kinds={"slurm", "torchtune"},
    # each run is recorded as its job ends (PartitionRecords), not by the step's output
    output_required=False,
)
def checkpoint(
    context: AssetExecutionContext,
    config: CheckpointConfig,
    launcher: LauncherResource,
    job_environment: JobEnvironmentResource,
) -> Iterator[MaterializeResult]:
    """The run's trained checkpoints (`artifacts/epoch_<N>/`): a SLURM job runs `tune run`
    with its finetune.yaml; a control run resolves to its base model."""
    plans = plans_for(context, job_environment)
    requests = {
        key: training_request(plan, retrain=config.retrain)
        for key, plan in plans.items()
        if not plan.is_control
    }
    records = PartitionRecords(context, [run_config.key], "training jobs")
    evaluations = (
        EarlyEvaluations(context, launcher, job_environment.environment())
        if EarlyEvaluations.wanted(context)
        else None
    )

    def landed(key: str, metadata: dict[str, Any]) -> None:
        records.materialized(key, metadata)
        if evaluations is not None:
            evaluations.start(key, plans[key])

    def ended(outcome: JobOutcome) -> None:
        if outcome.ok:
            request = requests[outcome.key]
            landed(outcome.key, checkpoint_metadata(plans[outcome.key], outcome, request.notes))
        else:
            records.failed(outcome)

    runner = launcher.runner(
        context, "checkpoint", training_progress, ProgressObservations(context), ended
    )
    if requests and isinstance(runner.launcher, SlurmLauncher):
        refuse_unrunnable(plans, requests)
    for key, plan in plans.items():
        if plan.is_control:
            landed(key, control_metadata(plan))
    try:
        outcomes = runner.run(list(requests.values())) if requests else {}
    except BaseException:  # interrupted: the jobs it followed are cancelled, and so are these
        if evaluations is not None:
            evaluations.cancel()
        raise
    yield from records.finish(outcomes)


def refuse_unrunnable(plans: dict[str, RunPlan], requests: dict[str, Any]) -> None:
    """Fail before submitting anything when the cluster could never run one of the jobs."""
    refusals = preflight_runs(plans[key] for key in requests)
    if refusals:
        raise Failure(
            description="Nothing was submitted: the cluster could never run "
            + "; ".join(summarize(refusals))
        )


def control_metadata(plan: RunPlan) -> dict[str, Any]:
    """A control run's checkpoint is its base model."""
    return {
        "run_type": "control",
        "checkpoint": MetadataValue.path(str(plan.model_path)),
        "note": MetadataValue.md(
            "Control run: never trained; its evaluations use the base "
            f"model `{plan.model.name}` at `{plan.model_path}`."
        ),
    }


def checkpoint_metadata(plan: RunPlan, outcome: JobOutcome, notes: list[str]) -> dict[str, Any]:
    """Job, epochs and loss of a trained (or adopted) run, as asset metadata."""
    trained = describe(plan)
    accounting = outcome.accounting
    metadata: dict[str, Any] = {
        "run_type": "fine-tuned",
        "dataset": plan.experiment.information(plan.run)["dataset"],
        "status": outcome.status,
        "job_id": outcome.job_id or "",
        "epochs_saved": len(trained.epochs),
        "epochs_kept": ", ".join(map(str, plan.saved_epochs)) or "none",
        "artifacts": MetadataValue.path(str(trained.artifacts)),
        "epochs": MetadataValue.table(
            [
                TableRecord(
                    {
                        "epoch": c.epoch,
                        "path": str(c.path),
                        "files": len(c.files),
                        "size_mb": round(c.size_bytes / 2**20, 3),
                        "weights": ", ".join(n for n in c.files if n.endswith(".safetensors")),
                    }
                )
                for c in trained.epochs
            ],
            schema=TableSchema(
                columns=[
                    TableColumn("epoch", "int"),
                    TableColumn("path", "string"),
                    TableColumn("files", "int"),
                    TableColumn("size_mb", "float"),
                    TableColumn("weights", "string"),
                ]
            ),
        ),
        "attempts": MetadataValue.json(
            [
                {
                    "job_id": a.job_id,
                    "state": a.state.value if a.state else None,
                    "reattached": a.reattached,
                    "args": list(a.args),
                    "time": a.time,
                    "why": a.why,
                }
                for a in outcome.attempts
            ]
        ),
        "oom_retry": outcome.oom_retried,
    }
    resubmitted = [f"job {a.job_id}: {a.why}" for a in outcome.attempts if a.why]
    if resubmitted:
        metadata["resubmissions"] = "; ".join(resubmitted)
    if outcome.oom_retried:
        args = outcome.attempts[-1].args
        first = outcome.attempts[0]
        metadata["oom_retry_note"] = (
            f"job {first.job_id} ran out of memory; job "
            f"{outcome.job_id} trained with " + " ".join(args) + " (same effective batch)"
        )
    if accounting is not None:
        metadata.update(
            {
                "state": accounting.state.value,
                "exit_code": accounting.exit_code,
                "elapsed_s": accounting.elapsed_s,
                "node": accounting.node or "",
            }
        )
        if accounting.max_rss_bytes is not None:
            metadata["max_rss_mb"] = round(accounting.max_rss_bytes / 2**20, 1)
    if outcome.log_path:
        metadata["job_log"] = MetadataValue.path(str(outcome.log_path))
    losses = trained.log.losses
    if losses:
        stride = max(1, len(losses) // MAX_CURVE_ROWS)
        metadata["final_loss"] = float(losses[-1][1])
        metadata["loss_curve"] = MetadataValue.table(
            [TableRecord({"step": step, "loss": loss}) for step, loss in losses[::stride]],
            schema=TableSchema(columns=[TableColumn("step", "int"), TableColumn("loss", "float")]),
        )
    validation = trained.log.validation_losses
    if validation:
        metadata["final_val_loss"] = float(validation[-1][1])
        metadata["validation_curve"] = MetadataValue.table(
            [TableRecord({"step": step, "val_loss": loss}) for step, loss in validation],
            schema=TableSchema(
                columns=[TableColumn("step", "int"), TableColumn("val_loss", "float")]
            ),
        )
    if notes:
        metadata["notes"] = "; ".join(notes)
    return metadata
