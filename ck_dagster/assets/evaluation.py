"""Evaluation assets: ``eval_spec`` (observed), ``eval_log``, its check, automation, schedule.

``eval_log`` runs one inspect-ai job per run (every saved epoch x task, or the base model of a
control run) through the same launcher and pool as training, or one per share of the runs that
load the same model when the pool cannot queue a job for each (``SharedEvaluations``), and
records each run as soon as its results land (``PartitionRecords``), not when the step's
slowest job ends. It materializes by itself when its checkpoint is updated or its evaluation
is registered changed (``assets.automation``; the report follows, ``assets/report.py``); the
``reevaluate_runs`` schedule (``assets.reevaluation``) catches up with whatever is stale.
Editing an evaluation (settings, tasks, task code and its imports, data, tokenizer) and
registering again observes a new ``eval_spec`` version, which marks ``eval_log`` stale.
"""

from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    BackfillPolicy,
    Config,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)
from pydantic import Field

from ck_dagster.assets.automation import eager_or_spec_observed
from ck_dagster.assets.configs import plans_for
from ck_dagster.assets.eval_jobs import (
    EVAL_LOG,
    LABEL,
    SharedEvaluations,
    eval_progress,
    eval_requests,
    registered_eval_specs,
)
from ck_dagster.assets.launcher import LauncherResource, PartitionRecords
from ck_dagster.assets.partitions import runs_partitions
from ck_dagster.assets.registry import (
    EVAL_SPEC,
    registered_keys,
    registered_runs,
)
from ck_dagster.assets.resources import JobEnvironmentResource
from ck_dagster.assets.training import checkpoint
from ck_dagster.assets.versions import code_version
from ck_dagster.errors import CkError
from ck_dagster.evaluation.results import EvalResults, is_current, read_results, result_problems
from ck_dagster.evaluation.spec import EvalSpec
from ck_dagster.slurm.runner import Attempt, JobOutcome

eval_spec = AssetSpec(
    key=EVAL_SPEC,
    partitions_def=runs_partitions,
    group_name="experiment",
    description=(
        "A run's evaluation as its experiment file describes it: tasks (and their code), "
        "settings, prompts, test data. Observed on registering; a new version marks eval_log "
        "stale."
    ),
    kinds={"yaml"},
)

RESULT_SCHEMA = TableSchema(
    columns=[
        TableColumn("task", "string"),
        TableColumn("target", "string"),
        TableColumn("scorer", "string"),
        TableColumn("accuracy", "float"),
        TableColumn("stderr", "float"),
        TableColumn("samples", "int"),
        TableColumn("errors", "int"),
        TableColumn("log", "string"),
    ]
)


class EvalConfig(Config):
    """Options for materializing evaluations."""

    force: bool = Field(
        default=False,
        description="Evaluate again even when the results are current (the schedule does). "
        "Earlier logs stay in their folders.",
    )


@asset(
    partitions_def=runs_partitions,
    deps=[checkpoint, eval_spec],
    backfill_policy=BackfillPolicy.single_run(),
    group_name="evaluation",
    kinds={"inspect", "slurm"},
    code_version=code_version("ck_dagster.evaluation"),
    # a new checkpoint, or a registered change of the evaluation (eval_spec is only observed)
    automation_condition=eager_or_spec_observed(EVAL_SPEC),
    # each run is recorded as its job ends (PartitionRecords), not by the step's output
    output_required=False,
    # checked by the step itself: a separate check step would need that output
    check_specs=[
        AssetCheckSpec(
            "every_sample_scored",
            asset=EVAL_LOG,
            blocking=True,
            description="No evaluation of any registered run has an errored sample, and each "
            "built-in task scored exactly as many samples as its test split has rows.",
        )
    ],
)
def eval_log(
    context: AssetExecutionContext,
    config: EvalConfig,
    launcher: LauncherResource,
    job_environment: JobEnvironmentResource,
) -> Iterator[MaterializeResult]:
    """inspect-ai logs of every saved epoch (the base model for a control run) on every task,
    prompted as the run trained; `inspect view` opens them."""
    plans = plans_for(context, job_environment)
    specs = registered_eval_specs(context, plans)
    environment = job_environment.environment()
    requests = eval_requests(specs, plans, environment, config.force)
    records = PartitionRecords(context, [checkpoint.key, EVAL_SPEC], "evaluation jobs")
    recorded: set[str] = set()

    def record(outcome: JobOutcome) -> None:
        key = outcome.key
        if key in recorded:
            return
        recorded.add(key)
        if not outcome.ok:
            records.failed(outcome)
            return
        results = read_results(plans[key].run_dir)
        assert results is not None, f"{key}: the eval job left no results.json"
        records.materialized(
            key, results_metadata(specs[key], results, outcome.status, outcome.job_id)
        )

    def ended(outcome: JobOutcome) -> None:
        shared.ended(outcome)
        for run in shared.per_run(outcome):
            record(run)

    def landed(job_key: str, line: str) -> None:  # a shared job's run is recorded at once
        key = shared.landed(job_key, line)
        if key is not None and is_current(plans[key].run_dir, specs[key]):
            job_id = runner.job_of(job_key)
            record(JobOutcome(key, "completed", [Attempt(job_id, ())] if job_id else []))

    runner = launcher.runner(context, LABEL, eval_progress, landed, ended)
    shared = SharedEvaluations(runner, requests, specs, plans, environment, config.force)
    try:
        outcomes = runner.run(shared.requests)
    finally:
        shared.release()
    runs = {run.key: run for outcome in outcomes.values() for run in shared.per_run(outcome)}
    yield from records.finish(runs)
    yield every_sample_scored(context.instance)


def results_metadata(
    spec: EvalSpec, results: EvalResults, status: str, job_id: str | None
) -> dict[str, Any]:
    """Scores per task x target, sample counts, errors and log paths, as asset metadata."""
    rows = []
    metadata: dict[str, Any] = {
        "status": status,
        "job_id": job_id or "",
        "spec_version": spec.version,
        "results": MetadataValue.path(str(spec.eval_dir / "results.json")),
    }
    for outcome in results.evaluations:
        for scorer, metrics in outcome.metrics.items():
            rows.append(
                TableRecord(
                    {
                        "task": outcome.task,
                        "target": outcome.label,
                        "scorer": scorer,
                        "accuracy": metrics.get("accuracy", float("nan")),
                        "stderr": metrics.get("stderr", float("nan")),
                        "samples": outcome.completed,
                        "errors": outcome.errors,
                        "log": outcome.log or "",
                    }
                )
            )
        if outcome.accuracy is not None:
            metadata[f"{outcome.task}/{outcome.label}/accuracy"] = float(outcome.accuracy)
    metadata["scores"] = MetadataValue.table(rows, schema=RESULT_SCHEMA)
    metadata["samples"] = sum(o.completed for o in results.evaluations)
    metadata["errored_samples"] = sum(o.errors for o in results.evaluations)
    metadata["logs"] = MetadataValue.path(str(spec.eval_dir))
    return metadata


def every_sample_scored(instance: DagsterInstance) -> AssetCheckResult:
    """No evaluation of any registered run has an errored sample, and each built-in task
    scored exactly as many samples as its test split has rows."""
    checked: dict[str, list[str]] = {}
    for key, run in registered_runs(instance, registered_keys(instance)).items():
        try:
            results = read_results(run.run_dir)
            if results is not None:
                spec = EvalSpec.read(run.run_dir / "eval" / "eval_spec.json")
                checked[key] = result_problems(results, spec)
        except CkError as exc:
            checked[key] = [str(exc)]
    failing = {key: problems for key, problems in checked.items() if problems}
    return AssetCheckResult(
        check_name="every_sample_scored",
        passed=not failing,
        description=(
            f"{len(failing)} of {len(checked)} runs have problems: "
            + "; ".join(f"{k}: {p[0]}" for k, p in failing.items())
        )
        if failing
        else f"every sample of {len(checked)} runs scored",
        metadata={
            "runs_checked": len(checked),
            "runs_failing": len(failing),
            "problems": MetadataValue.json(failing),
        },
    )
