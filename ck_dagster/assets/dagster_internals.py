"""The one place ck_dagster uses a private Dagster API, because no public one does the job.

An ``AssetObservation`` made outside an observable asset's own function (``ck-dagster
register``, the experiments sensor) can only carry its data version as this tag: Dagster's
public ``ObserveResult(data_version=...)`` exists only inside the asset function. Reading
it back uses the public ``AssetObservation.data_version``.

A custom ``AutomationCondition`` (``assets/automation.py``) gets a public ``AutomationContext``
whose instance and partition subsets are reached through its ``asset_graph_view`` and
``EntitySubset``, which Dagster documents for such conditions but does not export.
``ck_dagster_tests/test_library_contracts.py`` fails loudly if Dagster moves or renames them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dagster import AutomationContext, DagsterInstance
from dagster._core.definitions.data_version import DATA_VERSION_TAG


def data_version_tags(version: str) -> dict[str, str]:
    """The tags that give an ``AssetObservation`` the data version ``version``."""
    return {DATA_VERSION_TAG: version}


def condition_instance(context: AutomationContext) -> DagsterInstance:
    """The instance an automation condition is evaluated against."""
    return context.asset_graph_view.instance


def candidates_among(context: AutomationContext, partition_keys: Iterable[str]) -> Any:
    """The condition's candidate subset narrowed to ``partition_keys`` (an ``EntitySubset``)."""
    return context.candidate_subset.compute_intersection_with_partition_keys(set(partition_keys))
