"""The ``experiment_report`` asset, one partition per experiment, and the sensor that rebuilds
only the reports of experiments whose evaluations changed.

The report's partitions (``experiments``) differ from its upstream's (``runs``, keyed
``EXPERIMENT/RUN``). No built-in Dagster partition mapping maps ``EXP/RUN`` to ``EXP`` between
two dynamic partitions definitions, and custom ``PartitionMapping`` subclasses are deprecated
and ignored by automation. So the dependency is declared without a mapping (Dagster takes every
upstream partition), the asset reads its experiment's run directories, and instead of an
automation condition (which would rebuild every experiment's report for any evaluation) a
sensor requests the report of each experiment whose ``eval_log`` partitions were materialized.
"""

from collections.abc import Iterator
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetRecordsFilter,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    asset,
    sensor,
)

from ck_dagster.assets.evaluation import eval_log
from ck_dagster.assets.partitions import experiment_keys, experiments_partitions, split_key
from ck_dagster.assets.registry import load_registered_plans, registered_keys
from ck_dagster.assets.resources import JobEnvironmentResource
from ck_dagster.assets.training import checkpoint
from ck_dagster.errors import CkError
from ck_dagster.evaluation.results import read_results
from ck_dagster.finetune.plan import RunPlan
from ck_dagster.report.report import ScoreRow, build_report, losses_by_epoch
from ck_dagster.report.samples import sample_scores
from ck_dagster.training.artifacts import read_training_log

#: eval_log materializations the sensor reads per tick (the rest on the next tick).
SENSOR_BATCH = 1000


@asset(
    partitions_def=experiments_partitions,
    deps=[eval_log, checkpoint],
    group_name="evaluation",
    kinds={"csv"},
)
def experiment_report(
    context: AssetExecutionContext, job_environment: JobEnvironmentResource
) -> MaterializeResult:
    """One experiment's runs x epochs of the primary metric with 95% intervals and the best
    epoch, losses beside them, each fine-tuned run compared with the control and the best run
    on the same samples (McNemar), and the plot; CSV, PNG and Markdown in
    <experiment.dir>/report/."""
    experiment = context.partition_key
    keys = experiment_keys(registered_keys(context.instance), experiment)
    if not keys:
        raise CkError(
            f"experiment `{experiment}` has no registered runs: register its file "
            "(ck-dagster register FILE)"
        )
    plans = load_registered_plans(context.instance, keys, job_environment.environment())
    runs = [plans[key] for key in keys]
    spec = runs[0].experiment
    report = build_report(
        experiment,
        score_rows(runs),
        variables=list(spec.spec.variables or ()),
        labels=spec.vis_labels(),
    )
    plot = report.plot_png() if report.rows else None
    metadata: dict = {
        "runs": len(runs),
        "runs_evaluated": len({r.run for r in report.rows}),
        "report": MetadataValue.md(report.markdown(plot)),
    }
    if report.rows:
        written = report.write(runs[0].experiment.dir / "report")
        metadata.update({name: MetadataValue.path(str(path)) for name, path in written.items()})
        context.log.info(f"report of {experiment}: {written['markdown']}, {written['png']}")
    return MaterializeResult(metadata=metadata)


def score_rows(runs: list[RunPlan]) -> Iterator[ScoreRow]:
    """Every scored evaluation of these runs, with parameters, the losses of its epoch and
    each sample's score."""
    models = {run.model.name for run in runs}
    for run in runs:
        results = read_results(run.run_dir)
        if results is None:
            continue
        variables = run.experiment.spec.variables
        parameters = (
            {name: run.experiment.run_value(run.run, name) for name in variables}
            if variables and not run.is_control
            else dict(run.run.parameters)
        )
        if len(models) > 1:
            parameters["model"] = run.model.name
        losses = (
            {}
            if run.is_control
            else losses_by_epoch(read_training_log(run.artifacts_dir).steps, run.epochs)
        )
        for outcome in results.evaluations:
            per_sample = sample_scores(Path(run.run_dir) / outcome.log) if outcome.log else {}
            train_loss, val_loss = (
                (None, None)
                if outcome.label == "base"
                else losses.get(int(outcome.label.removeprefix("epoch_")), (None, None))
            )
            for scorer, metrics in outcome.metrics.items():
                if "accuracy" in metrics:
                    yield ScoreRow(
                        run.run.name,
                        run.run.type,
                        outcome.label,
                        outcome.task,
                        scorer,
                        metrics["accuracy"],
                        outcome.completed,
                        parameters,
                        train_loss,
                        val_loss,
                        per_sample.get(scorer, {}),
                    )


@sensor(
    target=[experiment_report],
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
)
def reports_sensor(context: SensorEvaluationContext) -> SensorResult:
    """Rebuild the report of each experiment whose evaluations were materialized since the last
    tick, and only those."""
    after = int(context.cursor) if context.cursor else 0
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=eval_log.key, after_storage_id=after),
        limit=SENSOR_BATCH,
        ascending=True,
    ).records
    if not records:
        return SensorResult(skip_reason="no evaluation materialized since the last tick")
    last = max(record.storage_id for record in records)
    experiments = sorted({split_key(r.partition_key)[0] for r in records if r.partition_key})
    known = set(context.instance.get_dynamic_partitions(experiments_partitions.name))
    missing = [name for name in experiments if name not in known]  # registered before reports
    return SensorResult(
        run_requests=[
            RunRequest(run_key=f"{name}@{last}", partition_key=name) for name in experiments
        ],
        dynamic_partitions_requests=[experiments_partitions.build_add_request(missing)]
        if missing
        else [],
        cursor=str(last),
    )
