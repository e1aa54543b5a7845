"""A sweep of a quick run and a slow one through real SLURM and `tune run` on the tiny model: the
quick run's checkpoint is recorded, and its evaluation starts, while the slow run still trains."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DataProvenance,
    evaluate_automation_conditions,
)

from ck_dagster.assets.dagster_internals import StaleStatus, stale_status_resolver
from ck_dagster.definitions import defs
from ck_dagster.experiment.schema import Experiment
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster_tests.fixtures.dagster import BIN, run_command
from ck_dagster_tests.fixtures.experiments import register_tiny_experiment

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CHECKPOINT, EVAL, RUN_CONFIG = AssetKey("checkpoint"), AssetKey("eval_log"), AssetKey("run_config")

#: one epoch of 10 steps against four of 400 (batches of one; the last epoch kept, so that
#: its evaluation stays short): the slow job trains well over 10 s longer.
SWEEP = """
  - {name: quick, type: fine-tuned, model: tiny-llama, parameters: {lora_rank: 8, epochs: 1}}
  - {name: slow, type: fine-tuned, model: tiny-llama,
     parameters: {lora_rank: 8, epochs: 4, batch_size: 1, max_steps_per_epoch: 400,
                  epochs_to_save: "3"}}
"""


@pytest.fixture
def sweep(dagster_home, tmp_path, tiny_model_dir, capitalization_data, slurm_cluster):
    """A registered quick/slow sweep with its run configs materialized."""
    experiment = register_tiny_experiment(
        tmp_path, tiny_model_dir, capitalization_data, prefix="sweep", runs=SWEEP
    )
    run_command(["dagster", *materialize_args("run_config", experiment)])
    return experiment


def materialize_args(selection: str, experiment: Experiment) -> list[str]:
    first, last = (experiment.partition_key(run) for run in experiment.runs)
    return [
        *("asset", "materialize", "-m", "ck_dagster", "--select", selection),
        *("--partition-range", f"{first}...{last}"),
    ]


def job_end(experiment: Experiment, run: str, kind: str = "train") -> float:
    """When the run's job ended, as sacct records it (whole seconds, local time)."""
    launcher = SlurmLauncher()
    [job] = launcher.find(f"ck:{experiment.name}/{run}:{kind}")
    end = launcher.accounting(job.job_id).end_time
    assert end, f"{run}'s {kind} job has not ended"
    return dt.datetime.fromisoformat(end).timestamp()


def checkpoints(instance: DagsterInstance, partition: str, asset: AssetKey = CHECKPOINT) -> list:
    """The partition's materializations of ``asset``, oldest first."""
    return instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset, asset_partitions=[partition]),
        limit=10,
        ascending=True,
    ).records


def evaluations(instance: DagsterInstance, partition: str) -> list:
    """The partition's eval_log materializations, oldest first."""
    return checkpoints(instance, partition, EVAL)


def test_explicit_range_records_the_quick_run_and_starts_its_eval_before_the_slow_job_ends(
    sweep,
) -> None:
    quick, slow = (sweep.partition_key(run) for run in ("quick", "slow"))
    run_command(
        ["dagster", *materialize_args("checkpoint,eval_log", sweep)],
        timeout=600,
        env={"CK_LAUNCHER": "slurm"},
    )
    slow_end = job_end(sweep, "slow")
    with DagsterInstance.get() as instance:
        first = checkpoints(instance, quick)[0]
        # recorded while the slow job trained (sacct's End is truncated to the second: 2 s
        # before it is before the job ended)
        assert first.timestamp < slow_end - 2, (first.timestamp, slow_end)
        [started] = [
            entry
            for entry in instance.all_logs(first.run_id)
            if f"{quick}: evaluation job" in entry.user_message
            and "started as the checkpoint landed" in entry.user_message
        ]
        assert started.timestamp < slow_end - 2, (started.timestamp, slow_end)
        # the eval_log step took that job over: one eval job for the quick run, recorded
        [eval_job] = SlurmLauncher().find(f"ck:{sweep.name}/quick:eval")
        assert eval_job.job_id in started.user_message
        [evaluation] = evaluations(instance, quick)
        metadata = {k: v.value for k, v in evaluation.asset_materialization.metadata.items()}
        # re-attached to, or adopted once done (the job id is missing while SLURM completes it)
        assert metadata["status"] in ("completed", "adopted") and metadata["samples"] > 0
        assert metadata["job_id"] in (eval_job.job_id, "")
        # and recorded as it ended, not when the slow run's evaluation did; only once
        slow_eval_end = job_end(sweep, "slow", "eval")
        assert evaluation.timestamp < slow_eval_end - 2, (evaluation.timestamp, slow_eval_end)
        for key in (quick, slow):
            assert len(evaluations(instance, key)) == 1, key

        # lineage: the early record points at the run's own run_config, as Dagster's would
        provenance = DataProvenance.from_tags(first.event_log_entry.tags or {})
        config = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=RUN_CONFIG, asset_partitions=[quick]), limit=1
        ).records[0]
        assert provenance is not None
        assert provenance.input_storage_ids[RUN_CONFIG] == config.storage_id
        resolver = stale_status_resolver(instance, defs.resolve_asset_graph())
        for key in (quick, slow):
            for asset in (CHECKPOINT, EVAL):
                assert resolver.get_status(asset, key) == StaleStatus.FRESH, (
                    asset,
                    key,
                    resolver.get_stale_root_causes(asset, key),
                )


def test_automation_evaluates_the_quick_run_while_the_slow_one_trains(sweep) -> None:
    quick, slow = (sweep.partition_key(run) for run in ("quick", "slow"))
    with DagsterInstance.get() as instance:
        cursor = evaluate_automation_conditions(defs, instance).cursor
        process = subprocess.Popen(
            [str(BIN / "dagster"), *materialize_args("checkpoint", sweep)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "CK_LAUNCHER": "slurm"},
        )
        try:
            deadline = time.monotonic() + 300
            while not checkpoints(instance, quick):
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, "the quick run was never recorded"
                time.sleep(1)
            # the step still follows the slow job; Dagster's own automation already asks for
            # the quick run's evaluation (its checkpoint is updated and no longer in progress)
            requested = evaluate_automation_conditions(defs, instance, cursor=cursor)
            [slow_job] = SlurmLauncher().find(f"ck:{sweep.name}/slow:train")
            assert not slow_job.state.is_final, slow_job
            assert requested.get_requested_partitions(EVAL) == {quick}
            output = process.communicate(timeout=600)[0]
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(60)
        assert process.returncode == 0, output
        # each run recorded once: the step's end does not record them again
        assert len(checkpoints(instance, quick)) == len(checkpoints(instance, slow)) == 1
        assert checkpoints(instance, quick)[0].timestamp < job_end(sweep, "slow") - 5
