"""The one place ck_dagster uses private Dagster APIs, because no public one does the job.

An ``AssetObservation`` made outside an observable asset's own function (``ck-dagster
register``, the experiments sensor) can only carry its data version as this tag: Dagster's
public ``ObserveResult(data_version=...)`` exists only inside the asset function. Reading
it back uses the public ``AssetObservation.data_version``. Likewise a materialization logged per
partition while a step runs (``checkpoint`` and ``eval_log`` record each run as its job ends;
Dagster has no public per-partition output in a single-run backfill) carries the data-version
and provenance tags Dagster would give a step's output only as tags built here, and such a
step yields its output only when a later step of its run depends on it (``downstream_assets``).

A custom ``AutomationCondition`` (``assets/automation.py``) gets a public ``AutomationContext``
whose instance and partition subsets are reached through its ``asset_graph_view`` and
``EntitySubset``, which Dagster documents for such conditions but does not export.
``ck-dagster status`` asks Dagster's stale-status resolver (what the UI shows), and
``ck-dagster ui`` embeds the webserver's app (tested over HTTP in ``ui/test_token.py``).
Jobs hold slots of a Dagster concurrency pool one per job, not one per op step, which only
the event-log storage's slot methods allow (:class:`ConcurrencyPool`).
``report_observations`` stores many runless observations in one SQLite transaction per shard:
Dagster's public ``report_runless_asset_event`` opens, commits and closes a connection per
event (~5-15 ms each on SQLite), so registering 1000 runs spent most of its time there.
``ck_dagster_tests/test_library_contracts.py`` fails loudly if Dagster moves or renames them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import sqlalchemy.exc
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetObservation,
    AutomationContext,
    DagsterInstance,
)
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    DEFAULT_DATA_VERSION,
    NULL_EVENT_POINTER,
    CachingStaleStatusResolver,
    StaleStatus,
    compute_logical_data_version,
    extract_data_version_from_entry,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)
from dagster._core.loader import LoadingContext
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

__all__ = [
    "ConcurrencyPool",
    "StaleStatus",
    "candidates_among",
    "condition_instance",
    "data_version_tags",
    "downstream_assets",
    "materialization_tags",
    "report_observations",
    "stale_status_resolver",
    "webserver_app",
]


def downstream_assets(context: AssetExecutionContext) -> AbstractSet[AssetKey]:
    """The assets that depend on the one this step materializes. Dagster gives a step the
    graph of its job only (``context.repository_def`` is unset under ``materialize()``)."""
    return context.job_def.asset_layer.get(context.asset_key).child_keys


def data_version_tags(version: str) -> dict[str, str]:
    """The tags that give an ``AssetObservation`` the data version ``version``."""
    return {DATA_VERSION_TAG: version}


def report_observations(
    instance: DagsterInstance, observations: Sequence[AssetObservation]
) -> None:
    """Report runless observations as ``report_runless_asset_event`` does; on SQLite storage
    in one transaction per database file instead of a connection and commit per event."""
    storage = instance.event_log_storage
    if not isinstance(storage, SqliteEventLogStorage):  # Postgres pools its connections
        for observation in observations:
            instance.report_runless_asset_event(observation)
        return
    with _one_transaction_per_shard(storage):
        for observation in observations:
            instance.report_runless_asset_event(observation)


@contextlib.contextmanager
def _one_transaction_per_shard(storage: SqliteEventLogStorage) -> Iterator[None]:
    """While open, the storage's ``_connect(shard)`` hands out one connection per shard, in a
    transaction committed when the block ends (rolled back if it raises). Its lock becomes
    re-entrant for this thread meanwhile (two shards are open at once); other threads wait."""
    connect, lock = storage._connect, storage._db_lock
    connections: dict[str, Any] = {}
    owner = threading.get_ident()
    with lock, contextlib.ExitStack() as shards:
        storage._db_lock = shards.enter_context(_held(threading.RLock()))

        @contextlib.contextmanager
        def shared(shard: str) -> Iterator[Any]:
            if threading.get_ident() != owner:  # another thread (a daemon's): it waits
                with connect(shard) as connection:  # on the lock this thread holds
                    yield connection
                return
            if shard not in connections:
                connections[shard] = shards.enter_context(connect(shard))
            yield connections[shard]

        storage._connect = shared  # type: ignore[method-assign]
        try:
            yield
        finally:
            del storage._connect
            storage._db_lock = lock


@contextlib.contextmanager
def _held(lock: Any) -> Iterator[Any]:
    with lock:
        yield lock


def materialization_tags(
    instance: DagsterInstance, code_version: str, inputs: dict[AssetKey, str]
) -> dict[str, str]:
    """The tags Dagster gives a materialization made from a step's output: the code version,
    each input partition's data version and event (``inputs``: asset -> partition), and the
    data version derived from them; so that one logged per partition has the same lineage.
    An input never materialized (an observed one) counts by its latest observation, as Dagster
    counts it."""
    tags = {CODE_VERSION_TAG: code_version}
    versions = {}
    for key, partition in inputs.items():
        record = instance.get_latest_data_version_record(key, None, partition)
        version = (
            extract_data_version_from_entry(record.event_log_entry) if record else None
        ) or DEFAULT_DATA_VERSION
        versions[key] = version
        tags[get_input_data_version_tag(key)] = version.value
        tags[get_input_event_pointer_tag(key)] = (
            str(record.storage_id) if record else NULL_EVENT_POINTER
        )
    tags[DATA_VERSION_TAG] = compute_logical_data_version(code_version, versions).value
    return tags


def condition_instance(context: AutomationContext) -> DagsterInstance:
    """The instance an automation condition is evaluated against."""
    return context.asset_graph_view.instance


def candidates_among(context: AutomationContext, partition_keys: Iterable[str]) -> Any:
    """The condition's candidate subset narrowed to ``partition_keys`` (an ``EntitySubset``)."""
    return context.candidate_subset.compute_intersection_with_partition_keys(set(partition_keys))


def stale_status_resolver(
    instance: DagsterInstance, asset_graph: BaseAssetGraph
) -> CachingStaleStatusResolver:
    """What the UI says of each asset partition: fresh, stale or missing (``ck-dagster status``).
    Dagster offers this only through its internal resolver, which needs a loading context."""
    return CachingStaleStatusResolver(instance, asset_graph, _Loading(instance))


class _Loading(LoadingContext):
    """The loading context the stale-status resolver needs outside a web request."""

    def __init__(self, instance: DagsterInstance) -> None:
        self._instance = instance
        self._loaders: dict = {}

    @property
    def instance(self) -> DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict:
        return self._loaders


@contextlib.contextmanager
def webserver_app(instance: DagsterInstance, module: str, location: str) -> Iterator[Any]:
    """Dagster's webserver as an ASGI app over the code location ``module`` (its code server
    runs while the context is open), to serve behind ``ck-dagster ui``'s token: Dagster has no
    public way to embed its webserver, and proxying a second server would leave its port open."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster_webserver import __version__
    from dagster_webserver.app import create_app_from_workspace_process_context

    target = ModuleTarget(
        module_name=module, attribute=None, working_directory=None, location_name=location
    )
    with WorkspaceProcessContext(
        instance, workspace_load_target=target, version=__version__
    ) as workspace:
        yield create_app_from_workspace_process_context(workspace)


class ConcurrencyPool:
    """A Dagster concurrency pool (the one ``dagster instance concurrency set`` and the UI's
    pools page show), claimed slot by slot under keys of our choosing within a Dagster run."""

    def __init__(self, instance: DagsterInstance, name: str) -> None:
        self._storage = instance.event_log_storage
        self.name = name

    def ensure(self, limit: int) -> bool:
        """Create the pool with ``limit`` slots unless it exists; True if this call made it.
        Two processes may create it at once: on Postgres the loser's insert hits the unique key
        (Dagster's own upsert is not atomic), which only means the pool is there."""
        if self.name in self._storage.get_concurrency_keys():
            return False
        try:
            self._storage.set_concurrency_slots(self.name, limit)
        except sqlalchemy.exc.IntegrityError:
            if self.name not in self._storage.get_concurrency_keys():
                raise
            return False
        return True

    def limit(self) -> int:
        """How many slots the pool has."""
        return self._storage.get_concurrency_info(self.name).slot_count

    def claim(self, run_id: str, key: str) -> bool:
        """Take a slot for ``key`` of Dagster run ``run_id``; False while the pool is full."""
        return self._storage.claim_concurrency_slot(self.name, run_id, key).is_claimed

    def free(self, run_id: str, key: str) -> None:
        """Give back the slot held for ``key`` of ``run_id``."""
        self._storage.free_concurrency_slot_for_step(run_id, key)

    def steps_of(self, run_id: str) -> set[str]:
        """The keys under which ``run_id`` holds a slot or waits for one."""
        info = self._storage.get_concurrency_info(self.name)
        return {
            entry.step_key
            for entry in [*info.claimed_slots, *info.pending_steps]
            if entry.run_id == run_id
        }

    def holders(self) -> set[str]:
        """The Dagster runs that hold slots of this pool."""
        return {slot.run_id for slot in self._storage.get_concurrency_info(self.name).claimed_slots}

    def free_run(self, run_id: str) -> None:
        """Give back every slot ``run_id`` holds, in any pool."""
        self._storage.free_concurrency_slots_for_run(run_id)
