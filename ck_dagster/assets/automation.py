"""Declarative automation that sees registrations: observed specs as triggers.

Registering records a run's evaluation as a runless *observation* of ``eval_spec``, and
Dagster's built-in conditions count only materializations of an asset that has no observe
function as updates. :class:`SpecObserved` is true for exactly the partitions whose spec got
a new observation since the previous evaluation, so ``eval_log`` reacts to an edited evaluation
section (or task code, data, tokenizer) as it reacts to a new checkpoint. Custom conditions are
evaluated in the code server, hence this module's automation sensor.
"""

from __future__ import annotations

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    AutomationContext,
    AutomationResult,
    DefaultSensorStatus,
)

from ck_dagster.assets.dagster_internals import candidates_among, condition_instance

#: observation records read per page.
PAGE = 1000


class SpecObserved(AutomationCondition):
    """True for the partitions whose ``spec`` asset was observed (registered with a new
    version: registering observes only what changed) since the previous evaluation."""

    spec: AssetKey

    def __init__(self, spec: AssetKey):
        self.spec = spec

    @property
    def name(self) -> str:
        return f"{self.spec.to_user_string()}_observed"

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        """The candidates observed after the cursor (the newest observation seen so far); the
        first evaluation only sets the cursor."""
        instance = condition_instance(context)
        after = int(context.cursor) if context.cursor else None
        if after is None:
            latest = instance.fetch_observations(self.spec, limit=1).records
            return AutomationResult(
                context,
                context.get_empty_subset(),
                cursor=str(latest[0].storage_id if latest else 0),
            )
        keys: set[str] = set()
        cursor = None
        while True:
            result = instance.fetch_observations(
                AssetRecordsFilter(asset_key=self.spec, after_storage_id=after),
                limit=PAGE,
                cursor=cursor,
                ascending=True,
            )
            for record in result.records:
                if record.partition_key is not None:
                    keys.add(record.partition_key)
                after = max(after, record.storage_id)
            if not result.has_more:
                break
            cursor = result.cursor
        return AutomationResult(context, candidates_among(context, keys), cursor=str(after))


def eager_or_spec_observed(spec: AssetKey) -> AutomationCondition:
    """``eager()`` (a dependency updated, nothing missing or in progress) that also fires when
    the observed ``spec`` dependency changes, and does not wait for it to be materialized."""
    return (
        AutomationCondition.eager()
        .replace(
            "any_deps_updated",
            AutomationCondition.any_deps_updated() | SpecObserved(spec),
        )
        .replace(
            "any_deps_missing",
            AutomationCondition.any_deps_missing().ignore(AssetSelection.assets(spec)),
        )
    )


#: the automation sensor, evaluated in the code server (custom conditions need it).
automation_sensor = AutomationConditionSensorDefinition(
    "ck_automation",
    target=AssetSelection.all(),
    use_user_code_server=True,
    default_status=DefaultSensorStatus.RUNNING,
    description="Materializes what declarative automation asks for: evaluations of new "
    "checkpoints and of re-registered evaluations, then the report.",
)
