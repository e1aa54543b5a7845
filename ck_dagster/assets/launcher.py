"""Running SLURM (or local) jobs from assets: the launcher resource, the slot pool, progress.

Shared by ``checkpoint`` and ``eval_log``: both submit one job per run through the same
:class:`~ck_dagster.slurm.runner.JobRunner`, capped by one Dagster concurrency pool.
"""

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    ConfigurableResource,
    DagsterInstance,
    Failure,
    MaterializeResult,
    MetadataValue,
)

from ck_dagster.assets.dagster_internals import (
    ConcurrencyPool,
    downstream_assets,
    materialization_tags,
)
from ck_dagster.settings import DEFAULT_CLAIM_SETTLE_S
from ck_dagster.slurm.choose import choose_launcher
from ck_dagster.slurm.launcher import Launcher
from ck_dagster.slurm.runner import JobOutcome, JobRequest, JobRunner
from ck_dagster.training.progress import is_trouble

#: run tags that let a later run see whether the process behind a run is gone (SIGKILL).
PID_TAG, HOST_TAG = "ck_dagster/pid", "ck_dagster/host"
#: prefix of the instance's key-value entries that say which Dagster run submits a job.
CLAIM_PREFIX = "ck_dagster/claim/"


class LauncherResource(ConfigurableResource):
    """Where jobs run and how many may sit in the queue at once.

    ``kind``: ``slurm`` or ``local``; left empty, SLURM when ``sbatch`` is on PATH.
    ``local_jobs_dir``: where the local launcher keeps its job records. ``ck_dagster.definitions``
    sets both from ``CK_LAUNCHER`` and ``CK_LOCAL_JOBS_DIR``. ``pool``/``pool_limit``: the
    Dagster concurrency pool that caps jobs in the queue across every Dagster run (the limit
    applies when the pool has none set yet; change it later with ``dagster instance
    concurrency set <pool> <n>`` or in the UI).
    """

    kind: str | None = None
    local_jobs_dir: str | None = None
    pool: str = "slurm_jobs"
    pool_limit: int = 25
    #: how long a claim on a run waits before it is read back (``InstanceClaims``).
    claim_settle_s: float = DEFAULT_CLAIM_SETTLE_S
    poll_initial: float = 2.0
    poll_max: float = 30.0
    max_resubmits: int = 2

    def launcher(self, log: Callable[[str], object]) -> Launcher:
        """The launcher for this deployment; the choice, and why, goes to ``log``."""
        return choose_launcher({}, log, kind=self.kind, local_jobs_dir=self.local_jobs_dir)

    def runner(
        self,
        context: AssetExecutionContext,
        label: str,
        summarize: Callable[[str], str | None],
        observe: Callable[[str, str], object] | None = None,
        on_outcome: Callable[[JobOutcome], object] = lambda outcome: None,
    ) -> JobRunner:
        """A job runner that holds pool slots and logs into the Dagster run: every job event,
        and the job log lines ``summarize`` turns into progress; ``observe(key, line)`` also
        gets every job log line (e.g. to record progress on the partition); ``on_outcome``
        each run's outcome as soon as its job has ended."""
        mark_process(context.instance, context.run_id)
        slots = PoolSlots(
            context.instance, self.pool, context.run_id, label, self.pool_limit, context.log.info
        )
        claims = InstanceClaims(context.instance, context.run_id, self.claim_settle_s)
        progress = ProgressLog(context.log.info, summarize)
        return JobRunner(
            self.launcher(context.log.info),
            slots=slots,
            claims=claims,
            on_event=lambda key, message: context.log.info(f"{key}: {message}" if key else message),
            on_log=progress
            if observe is None
            else lambda key, line: (progress(key, line), observe(key, line)),
            max_resubmits=self.max_resubmits,
            poll_initial=self.poll_initial,
            poll_max=self.poll_max,
            on_outcome=on_outcome,
        )


class ProgressLog:
    """Job log lines as progress in the Dagster run log: what ``summarize`` keeps, at most one
    line per run every ``every`` seconds, except problems, which always pass."""

    def __init__(
        self,
        log: Callable[[str], object],
        summarize: Callable[[str], str | None],
        every: float = 10.0,
    ):
        self.log = log
        self.summarize = summarize
        self.every = every
        self._last: dict[str, float] = {}

    def __call__(self, key: str, line: str) -> None:
        summary = self.summarize(line)
        if summary is None:
            return
        now = time.monotonic()
        if not is_trouble(summary) and now - self._last.get(key, -self.every) < self.every:
            return
        self._last[key] = now
        self.log(f"{key}: {summary}")


class PoolSlots:
    """Slots of a Dagster concurrency pool, one per job in the queue (not one per step).

    A single-run backfill follows many jobs in one step, so the pool is claimed per job
    (``<label>[<partition>]``). Slots held by runs that have ended, or whose process on this
    host is gone (killed with SIGKILL), are given back when the pool is full. A slot taken by
    an earlier step of the same run (an evaluation the training step started) is given back
    by the step that sees its job end.
    """

    def __init__(
        self,
        instance: DagsterInstance,
        pool: str,
        run_id: str,
        label: str,
        default_limit: int,
        log: Callable[[str], object],
    ):
        self.instance = instance
        self.pool = ConcurrencyPool(instance, pool)
        self.run_id = run_id
        self.label = label
        self.log = log
        self._last_cleanup = 0.0
        self._mine: set[str] | None = None  # this run's steps in the pool, read when needed
        if self.pool.ensure(default_limit):
            log(f"concurrency pool `{pool}` created with {default_limit} slots")

    def acquire(self, key: str) -> bool:
        self._steps_of_run().add(self._step(key))  # claimed, or queued for a slot
        if self.pool.claim(self.run_id, self._step(key)):
            return True
        if time.monotonic() - self._last_cleanup > 30 and self._free_abandoned():
            return self.pool.claim(self.run_id, self._step(key))
        return False

    def release(self, key: str) -> None:
        steps = self._steps_of_run()
        if self._step(key) in steps:
            steps.discard(self._step(key))
            self.pool.free(self.run_id, self._step(key))

    def capacity(self) -> int | None:
        return self.pool.limit()

    def _steps_of_run(self) -> set[str]:
        """This run's steps that hold or wait for a slot: one query, then kept up to date
        (so releasing a key that never had a slot costs nothing)."""
        if self._mine is None:
            self._mine = self.pool.steps_of(self.run_id)
        return self._mine

    def _step(self, key: str) -> str:
        return f"{self.label}[{key}]"

    def _free_abandoned(self) -> bool:
        self._last_cleanup = time.monotonic()
        freed = False
        for run_id in self.pool.holders() - {self.run_id}:
            run = self.instance.get_run_by_id(run_id)
            if run is None or run.is_finished or _process_gone(run.tags):
                self.pool.free_run(run_id)
                self.log(f"freed pool slots of run {run_id}, which is no longer running")
                freed = True
        return freed


class InstanceClaims:
    """Which Dagster run submits each job, kept in the instance's key-value storage (the
    table sensors keep their cursors in): shared by every process on SQLite and Postgres, and
    kept across restarts.

    That storage has no compare-and-set, so a claim follows Fischer's timed mutual exclusion:
    a process writes its claim only where none is held by a live run, waits ``settle_s`` (far
    longer than a write takes), then reads back: of processes that claimed at the same moment,
    only the last writer finds its own claim. A claim whose run has finished, or whose process
    on this host is gone (SIGKILL), is free to take.
    """

    def __init__(
        self, instance: DagsterInstance, run_id: str, settle_s: float = DEFAULT_CLAIM_SETTLE_S
    ):
        self.instance = instance
        self.storage = instance.daemon_cursor_storage
        self.run_id = run_id
        self.settle_s = settle_s

    def claim(self, requests: Sequence[JobRequest]) -> dict[str, str]:
        held: dict[str, str] = {}
        mine = []
        for request, holder in zip(requests, self._holders(requests), strict=True):
            if _held_by_other(holder, self.run_id) and self._alive(holder["run_id"]):
                held[request.key] = _describe(holder)
            else:
                self._write(request)
                mine.append(request)
        if mine:
            time.sleep(self.settle_s)
            for request, holder in zip(mine, self._holders(mine), strict=True):
                if holder.get("run_id") != self.run_id:
                    held[request.key] = _describe(holder)
        return held

    def take_over(self, request: JobRequest, note: str) -> None:
        self._write(request, note=f"Dagster run {self.run_id}: {note}")

    def lost(self, request: JobRequest) -> str | None:
        [holder] = self._holders([request])
        if holder.get("run_id") in (None, self.run_id):
            return None
        return holder.get("note") or None

    def release(self, request: JobRequest) -> None:
        """Free the claim, keeping who held it and why: a process that followed a job this one
        took over may see that job end only after this run is done, and must still learn why."""
        [holder] = self._holders([request])
        if holder.get("run_id") == self.run_id:
            released = {**holder, "released": True}
            self.storage.set_cursor_values({_claim_key(request): json.dumps(released)})

    def _write(self, request: JobRequest, note: str = "") -> None:
        value = {"run_id": self.run_id, "since": time.time(), "note": note}
        self.storage.set_cursor_values({_claim_key(request): json.dumps(value)})

    def _holders(self, requests: Sequence[JobRequest]) -> list[dict[str, Any]]:
        keys = [_claim_key(r) for r in requests]
        values = self.storage.get_cursor_values(set(keys))
        holders = []
        for key in keys:
            try:
                holder = json.loads(values.get(key) or "{}")
            except ValueError:
                holder = {}
            holders.append(holder if isinstance(holder, dict) else {})
        return holders

    def _alive(self, run_id: str) -> bool:
        run = self.instance.get_run_by_id(run_id)
        return run is not None and not run.is_finished and not _process_gone(run.tags)


def _held_by_other(holder: dict[str, Any], run_id: str) -> bool:
    """Is this claim held, and not by ``run_id``? (A released one is free to take.)"""
    return not holder.get("released") and holder.get("run_id") not in (None, run_id)


def _claim_key(request: JobRequest) -> str:
    return CLAIM_PREFIX + request.job_name


def _describe(holder: dict[str, Any]) -> str:
    return f"Dagster run {holder.get('run_id', '?')}"


def mark_process(instance: DagsterInstance, run_id: str) -> None:
    """Tag the run with this process, so a later run can tell when it was killed."""
    instance.add_run_tags(run_id, {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})


def _process_gone(tags: dict[str, str]) -> bool:
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    try:
        os.kill(int(tags[PID_TAG]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class PartitionRecords:
    """Records each partition of a step in Dagster as soon as its job has ended, not when the
    step ends: a materialization (with the data version and lineage Dagster gives a step's
    output) for a run that is done, an observation saying why for one that failed.

    ``finish`` then fails the step naming the failed runs (Dagster marks their partitions
    failed), or, only when a later step of the same Dagster run needs this one's output (Dagster
    skips it otherwise), yields it: Dagster then records every partition once more, with the
    same metadata.
    """

    def __init__(
        self, context: AssetExecutionContext, inputs: Sequence[AssetKey], what: str
    ) -> None:
        self.context = context
        self.inputs = inputs
        self.what = what
        self.code_version = (
            context.assets_def.code_versions_by_key.get(context.asset_key) or context.run_id
        )

    def materialized(self, key: str, metadata: dict[str, Any]) -> None:
        """Record ``key`` as materialized now."""
        tags = materialization_tags(
            self.context.instance, self.code_version, {dep: key for dep in self.inputs}
        )
        self.context.log_event(
            AssetMaterialization(
                self.context.asset_key, partition=key, metadata=metadata, tags=tags
            )
        )
        self.context.add_asset_metadata(metadata, partition_key=key)

    def failed(self, outcome: JobOutcome) -> None:
        """Say on ``outcome``'s partition, now, that its job failed and why."""
        self.context.log_event(
            AssetObservation(
                self.context.asset_key,
                partition=outcome.key,
                description=f"failed: {outcome.message.splitlines()[0]}",
                metadata={
                    "status": "failed",
                    "job_id": outcome.job_id or "",
                    "error": MetadataValue.md(f"```\n{outcome.message}\n```"),
                },
            )
        )

    def finish(self, outcomes: dict[str, JobOutcome]) -> Iterator[MaterializeResult]:
        """Fail naming the failed jobs, else yield the step's output when a later step of
        this Dagster run depends on it."""
        if any(not outcome.ok for outcome in outcomes.values()):
            raise _failure(outcomes, self.what)
        if self._needed_later():
            yield MaterializeResult()

    def _needed_later(self) -> bool:
        """Whether this Dagster run also materializes an asset downstream of this one (a run
        without an asset selection may)."""
        selection = self.context.run.asset_selection
        if selection is None:
            return True
        return bool(downstream_assets(self.context) & selection)


def _failure(outcomes: dict[str, JobOutcome], what: str) -> Failure:
    """A Failure naming every failed run with its state, exit code and log tail."""
    failed = [o for o in outcomes.values() if not o.ok]
    return Failure(
        description=f"{len(failed)} of {len(outcomes)} {what} failed:\n\n"
        + "\n\n".join(o.message for o in failed),
        metadata={"failed": MetadataValue.json({o.key: o.message for o in failed})},
        allow_retries=False,
    )
