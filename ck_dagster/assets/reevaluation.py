"""The ``reevaluate_runs`` schedule: evaluate again only what is stale or missing.

A tick looks at every registered run with a checkpoint and asks the evaluation's own record
(``results.json`` and ``eval_spec.json`` in the run folder) against the registered ``eval_spec``
version whether its scores could change: never evaluated, the evaluation changed (settings,
tasks, task code and the modules it imports, data, tokenizer: all in the version), the
checkpoint files changed, or a failed or incomplete evaluation. It reads files and the
instance only; no job, no planning.

Requests are partition ranges, one per experiment: a range covers runs in registration order,
so when an experiment's stale runs are not next to each other (a current run, or another
experiment's run registered in between), each contiguous block gets its own request. A range
thus never holds a current run (which would be evaluated again for nothing when forced) nor a
run of another experiment (whose problems would fail this one's request).
"""

from __future__ import annotations

from collections.abc import Iterator

from dagster import (
    AssetSelection,
    ConfigurableResource,
    DagsterInstance,
    DefaultScheduleStatus,
    RunConfig,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    schedule,
)

from ck_dagster.assets.evaluation import EvalConfig, eval_log
from ck_dagster.assets.partitions import runs_partitions, split_key
from ck_dagster.assets.registry import (
    EVAL_SPEC,
    registered_keys,
    registered_runs,
    registered_versions,
)
from ck_dagster.assets.training import checkpoint
from ck_dagster.evaluation.results import stale_reason
from ck_dagster.evaluation.spec import EVAL_DIR, SPEC_FILE, EvalSpec

#: the run tags that make a run request cover a partition range.
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


class ReevaluationResource(ConfigurableResource):
    """What the ``reevaluate_runs`` schedule evaluates: only stale or missing evaluations, or,
    with ``force``, every run that has a checkpoint (``ck_dagster.definitions`` sets it from
    ``CK_REEVALUATE_FORCE``)."""

    force: bool = False


reevaluate_job = define_asset_job(
    "reevaluate_runs_job",
    selection=AssetSelection.assets(eval_log),
    partitions_def=runs_partitions,
    description="Evaluate a range of runs; run config `force: true` evaluates them again even "
    "when their results are current.",
)


def reevaluate_schedule(cron: str) -> ScheduleDefinition:
    """The ``reevaluate_runs`` schedule, ticking at ``cron`` (``ck_dagster.definitions`` passes
    the deployment's ``CK_REEVALUATE_CRON``, read when the definitions are built)."""
    return schedule(
        name="reevaluate_runs",
        job=reevaluate_job,
        cron_schedule=cron,
        default_status=DefaultScheduleStatus.RUNNING,
    )(reevaluate_runs)


def reevaluate_runs(
    context: ScheduleEvaluationContext, reevaluation: ReevaluationResource
) -> Iterator[RunRequest | SkipReason]:
    """Evaluate again, one run request per experiment, the trained runs whose scores could
    change (weekly by default; set CK_REEVALUATE_CRON); every trained run when forced."""
    instance = context.instance
    keys = registered_keys(instance)
    materialized = instance.get_materialized_partitions(checkpoint.key)
    versions = registered_versions(instance, EVAL_SPEC, [k for k in keys if k in materialized])
    trained = [key for key in keys if key in versions]
    if not trained:
        yield SkipReason("no registered run with an evaluation has a checkpoint yet")
        return
    force = reevaluation.force
    stale = {key: "forced" for key in trained} if force else stale_evaluations(instance, versions)
    for reason in sorted(set(stale.values())):
        context.log.info(f"{reason}: " + some([k for k, r in stale.items() if r == reason]))
    drifted = [] if force else changed_on_disk(instance, [k for k in trained if k not in stale])
    if drifted:
        context.log.warning(drift_message(drifted))
    if not stale:
        yield SkipReason(
            f"nothing to re-evaluate: the evaluations of all {len(trained)} "
            "trained runs are current (same checkpoint files, same evaluation "
            "as registered, every log in place)"
            + (f"; {drift_message(drifted)}" if drifted else "")
        )
        return
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    for block in contiguous_blocks(keys, set(stale)):
        yield RunRequest(
            run_key=f"{block[0]}...{block[-1]}@{tick}",
            tags={RANGE_START: block[0], RANGE_END: block[-1]},
            run_config=RunConfig(ops={"eval_log": EvalConfig(force=force)}),
        )


def stale_evaluations(instance: DagsterInstance, versions: dict[str, str]) -> dict[str, str]:
    """The runs whose evaluation must run again, with why, among those whose registered
    evaluation version ``versions`` gives."""
    runs = registered_runs(instance, list(versions))
    stale = {}
    for key, version in versions.items():
        reason = stale_reason(runs[key].run_dir, version) if key in runs else "not registered"
        if reason is not None:
            stale[key] = reason
    return stale


def changed_on_disk(instance: DagsterInstance, keys: list[str]) -> list[str]:
    """Runs whose evaluation inputs (task scripts and their imports, data, tokenizer) changed
    on disk since they were registered: stale, but only registering again records that."""
    runs = registered_runs(instance, keys)
    drifted = []
    for key in keys:
        path = runs[key].run_dir / EVAL_DIR / SPEC_FILE if key in runs else None
        if path is not None and path.is_file() and EvalSpec.read(path).changed_inputs():
            drifted.append(key)
    return drifted


def some(keys: list[str], shown: int = 10) -> str:
    """The first ``shown`` keys, and how many more (a log line stays short on 1000 runs)."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def drift_message(keys: list[str]) -> str:
    """What to do about runs whose evaluation inputs changed without being registered."""
    return (
        f"the evaluation inputs of {some(keys)} changed since they were registered: "
        "register their experiment files again (ck-dagster register FILE, or let the "
        "experiments sensor do it) and they are evaluated"
    )


def contiguous_blocks(keys: list[str], wanted: set[str]) -> list[list[str]]:
    """The ``wanted`` keys as runs of neighbours in ``keys`` (registration order), a block never
    spanning two experiments: each block is one partition range."""
    blocks: list[list[str]] = []
    previous: str | None = None
    for key in keys:
        if key in wanted:
            if previous is not None and split_key(previous)[0] == split_key(key)[0]:
                blocks[-1].append(key)
            else:
                blocks.append([key])
            previous = key
        else:
            previous = None
    return blocks
