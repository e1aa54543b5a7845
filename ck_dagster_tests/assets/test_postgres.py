"""The shared deployment: the whole chain and the concurrency tests on a real PostgreSQL,
with the README's dagster.yaml (every test of this module runs on a fresh database)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from ck_dagster.experiment.load import load_experiment
from ck_dagster_tests.assets.test_checkpoint import (
    TRAINING,
    experiment,  # noqa: F401  (the fixture)
)
from ck_dagster_tests.assets.test_claims import (
    test_claims_made_at_the_same_moment_have_one_winner,  # noqa: F401  (collected here, on Postgres)
    two_materializations_at_once_make_one_job,
)
from ck_dagster_tests.assets.test_evaluation_e2e import materialize, metadata
from ck_dagster_tests.evaluation.tiny_experiment import write_experiment
from ck_dagster_tests.fixtures.dagster import run_command


@pytest.fixture
def dagster_home(postgres_home: Path) -> Path:
    """Every Dagster instance of this module is the README's Postgres one."""
    return postgres_home


def test_the_instance_is_postgres(dagster_home: Path) -> None:
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"


@pytest.mark.slurm
@pytest.mark.slow
def test_whole_chain_on_postgres(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data, slurm_cluster
) -> None:
    """Register, configs, checkpoint through SLURM, eval, report: all recorded in Postgres."""
    file = write_experiment(tmp_path, tiny_model_dir, capitalization_data)
    run_command(["ck-dagster", "register", file])
    loaded = load_experiment(file)
    keys = [loaded.partition_key(run) for run in loaded.runs]
    log = materialize(
        "--select",
        "recipe_config,run_config,checkpoint,eval_log",
        "--partition-range",
        f"{keys[0]}...{keys[-1]}",
    )
    assert "tiny_eval/tuned: submitted job" in log
    materialize("--select", "experiment_report", "--partition", "tiny_eval")
    with DagsterInstance.get() as instance:
        tuned = metadata(instance, "checkpoint", "tiny_eval/tuned")
        assert tuned["state"] == "COMPLETED" and tuned["epochs_saved"] > 0
        assert metadata(instance, "eval_log", "tiny_eval/tuned")["errored_samples"] == 0
        report = metadata(instance, "experiment_report", "tiny_eval")["report"]
        assert "| tuned |" in report and "McNemar" in report
        assert instance.get_latest_materialization_event(AssetKey("experiment_report"))
        assert "slurm_jobs" in instance.event_log_storage.get_concurrency_keys()


#: a process that creates pools race-0, race-1, ... each when the test says go, printing the
#: outcome of each (True if this process made it, or the error).
_CREATE_POOLS = """
import pathlib, sys, time
from dagster import DagsterInstance
from ck_dagster.assets.dagster_internals import ConcurrencyPool
folder, attempts = pathlib.Path(sys.argv[1]), int(sys.argv[2])
with DagsterInstance.get() as instance:
    for attempt in range(attempts):
        pool = ConcurrencyPool(instance, f"race-{attempt}")
        (folder / f"ready-{attempt}-{sys.argv[3]}").touch()
        deadline = time.monotonic() + 600  # never outlive a failed test
        while not (folder / f"go-{attempt}").exists():
            if time.monotonic() > deadline:
                sys.exit("no go")
            time.sleep(0.001)
        try:
            print(pool.ensure(3), flush=True)
        except Exception as exc:
            print(repr(exc), flush=True)
"""


def test_processes_creating_the_pool_at_once_all_get_it(dagster_home: Path, tmp_path: Path) -> None:
    """Six processes create one pool in the same instant (as materializations do on a fresh
    deployment), three times over: Dagster's insert is not atomic on Postgres (CI once saw a
    duplicate-key error), and none of them may fail."""
    attempts, count = 3, 6
    with DagsterInstance.get():  # the database's tables, made once as a deployment's first use does
        pass
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATE_POOLS, str(tmp_path), str(attempts), str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    try:
        for attempt in range(attempts):
            deadline = time.monotonic() + 300
            while len(list(tmp_path.glob(f"ready-{attempt}-*"))) < count:
                assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
                time.sleep(0.05)
            (tmp_path / f"go-{attempt}").touch()
        outcomes = [process.communicate(timeout=300)[0].splitlines() for process in processes]
    finally:
        for process in processes:
            process.kill()
    for attempt in range(attempts):
        made = [o[attempt] for o in outcomes]
        assert set(made) <= {"True", "False"}, made
        assert made.count("True") >= 1, made
    with DagsterInstance.get() as instance:
        assert instance.event_log_storage.get_concurrency_info("race-2").slot_count == 3


@pytest.mark.slurm
@pytest.mark.slow
def test_two_trainings_at_once_make_one_job(experiment) -> None:  # noqa: F811  (the imported fixture)
    """The claim through Postgres (an evaluation's claim is the same code: SQLite covers it)."""
    two_materializations_at_once_make_one_job(experiment, TRAINING)
