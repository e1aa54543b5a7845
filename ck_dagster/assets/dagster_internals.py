"""The one place ck_dagster uses a private Dagster API, because no public one does the job.

An ``AssetObservation`` made outside an observable asset's own function (``ck-dagster
register``, the experiments sensor) can only carry its data version as this tag: Dagster's
public ``ObserveResult(data_version=...)`` exists only inside the asset function. Reading
it back uses the public ``AssetObservation.data_version``.
``ck_dagster_tests/test_library_contracts.py`` fails loudly if Dagster moves or renames it.
"""

from __future__ import annotations

from dagster._core.definitions.data_version import DATA_VERSION_TAG


def data_version_tags(version: str) -> dict[str, str]:
    """The tags that give an ``AssetObservation`` the data version ``version``."""
    return {DATA_VERSION_TAG: version}
