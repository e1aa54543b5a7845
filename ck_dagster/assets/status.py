"""``ck-dagster status EXP``: where every run of an experiment stands, one line each.

Read from the Dagster instance (what is materialized, and whether it is stale, as the UI says;
the last progress a training step observed) and from the run folders (epochs saved, evaluations
finished), and from the launcher (the run's jobs pending or running now).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, Definitions

from ck_dagster.assets.dagster_internals import StaleStatus, stale_status_resolver
from ck_dagster.assets.partitions import experiment_keys, split_key
from ck_dagster.assets.progress import PROGRESS
from ck_dagster.assets.registry import registered_keys, registered_runs
from ck_dagster.errors import CkError
from ck_dagster.evaluation.results import read_results
from ck_dagster.evaluation.spec import EVAL_DIR, SPEC_FILE, EvalSpec
from ck_dagster.slurm.launcher import Launcher
from ck_dagster.slurm.script import job_name_for
from ck_dagster.training.artifacts import epoch_checkpoints

#: the per-run assets whose freshness a status line reports, upstream first.
RUN_ASSETS = ("run_config", "checkpoint", "eval_log")


@dataclass(frozen=True)
class RunStatus:
    """What one status line says about a run."""

    run: str
    config: str
    job: str
    epochs: str
    evals: str
    freshness: str

    def cells(self) -> list[str]:
        """The line's columns, in :data:`COLUMNS` order."""
        return [self.run, self.config, self.job, self.epochs, self.evals, self.freshness]


#: the columns of ``ck-dagster status``.
COLUMNS = ["run", "config", "training job", "epochs", "evals", "freshness"]


def experiment_status(
    instance: DagsterInstance, defs: Definitions, experiment: str, launcher: Launcher | None
) -> list[RunStatus]:
    """A status of every registered run of ``experiment`` (``defs``: the deployment's
    definitions), in registration order; without a launcher, jobs are told from the instance
    only."""
    keys = experiment_keys(registered_keys(instance), experiment)
    if not keys:
        known = sorted({split_key(k)[0] for k in registered_keys(instance)})
        raise CkError(
            f"no experiment `{experiment}` is registered in this instance"
            + (f" (registered: {', '.join(known)})" if known else "")
            + "; register its file first: ck-dagster register FILE"
        )
    runs = registered_runs(instance, keys)
    resolver = stale_status_resolver(instance, defs.resolve_asset_graph())

    def status(asset: str, key: str) -> StaleStatus:
        return resolver.get_status(AssetKey(asset), key)

    found = []
    for key in keys:
        run_dir = runs[key].run_dir
        control = runs[key].recipe is None
        found.append(
            RunStatus(
                run=split_key(key)[1],
                config=status("run_config", key).value.lower(),
                job="control run: no training" if control else _job(instance, key, launcher),
                epochs="-" if control else _epochs(run_dir),
                evals=_evals(run_dir),
                freshness=_freshness({asset: status(asset, key) for asset in RUN_ASSETS}),
            )
        )
    return found


def _job(instance: DagsterInstance, key: str, launcher: Launcher | None) -> str:
    """The training job: pending or running now (with its last observed progress), else how
    the last one that was recorded ended."""
    experiment, run = split_key(key)
    alive = [
        s
        for s in (launcher.find(job_name_for(experiment, run, "train")) if launcher else [])
        if not s.state.is_final
    ]
    checkpoint = AssetKey("checkpoint")
    if alive:
        observed = instance.fetch_observations(
            AssetRecordsFilter(asset_key=checkpoint, asset_partitions=[key]), limit=1
        ).records
        progress = ""
        if observed and observed[0].asset_observation is not None:
            entry = observed[0].asset_observation.metadata.get(PROGRESS)
            progress = f" ({entry.value})" if entry is not None else ""
        return f"job {alive[0].job_id} {alive[0].state.value}{progress}"
    done = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=checkpoint, asset_partitions=[key]), limit=1
    ).records
    if not done or done[0].asset_materialization is None:
        return "no job yet"
    metadata = done[0].asset_materialization.metadata
    job_id = metadata["job_id"].value if "job_id" in metadata else ""
    state = (
        metadata["state"].value
        if "state" in metadata
        else (metadata["status"].value if "status" in metadata else "")
    )
    return f"job {job_id} {state}".strip() if job_id else f"checkpoints {state}".strip()


def _epochs(run_dir: Path) -> str:
    """Epochs saved (with weights) of the epochs the run's finetune.yaml trains."""
    saved = sum(1 for c in epoch_checkpoints(run_dir / "artifacts") if c.has_weights)
    try:
        config = yaml.safe_load((run_dir / "finetune.yaml").read_text())
        wanted = str(int(config.get("epochs", 1)))
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        wanted = "?"
    return f"{saved}/{wanted}"


def _evals(run_dir: Path) -> str:
    """Evaluations finished cleanly, of those the run's eval_spec.json expects."""
    spec_file = run_dir / EVAL_DIR / SPEC_FILE
    if not spec_file.is_file():
        return "-"
    try:
        expected = EvalSpec.read(spec_file).expected_logs()
        results = read_results(run_dir)
    except CkError:
        return "?"
    done = (
        0
        if results is None
        else sum(
            1
            for task, label in expected
            if (outcome := results.outcome(task, label)) is not None and outcome.ok
        )
    )
    return f"{done}/{len(expected)}"


def _freshness(statuses: dict[str, StaleStatus]) -> str:
    """``fresh``, or which assets are stale and which are not materialized yet."""
    stale = [a for a, s in statuses.items() if s is StaleStatus.STALE]
    missing = [a for a, s in statuses.items() if s is StaleStatus.MISSING]
    parts = ([f"stale: {', '.join(stale)}"] if stale else []) + (
        [f"missing: {', '.join(missing)}"] if missing else []
    )
    return "; ".join(parts) or "fresh"


def status_lines(
    instance: DagsterInstance, defs: Definitions, experiment: str, launcher: Launcher | None
) -> list[str]:
    """The lines ``ck-dagster status`` prints: a header, then one per run, in columns."""
    runs = experiment_status(instance, defs, experiment, launcher)
    rows = [COLUMNS, *(run.cells() for run in runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]
