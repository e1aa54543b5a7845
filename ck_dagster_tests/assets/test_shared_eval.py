"""Runs of one base model evaluated in one job on one load, through real SLURM, `tune run` and
inspect-ai on the tiny model: when the job pool cannot queue a job per run, each job takes its
share of the runs; each run is recorded as its own results land, scores exactly as it does
alone, and a process that evaluates one of them after the first was killed follows that job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
from inspect_ai.log import read_eval_log

from ck_dagster.evaluation.submit import SHARED_JOB
from ck_dagster.experiment.schema import Experiment
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.states import JobState
from ck_dagster_tests.fixtures.dagster import BIN, run_command
from ck_dagster_tests.fixtures.experiments import register_tiny_experiment

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EVAL = AssetKey("eval_log")
#: two LoRA runs (each epoch: an adapter on the base model) and a control run (the base
#: model): all three load the same folder.
RUNS = """
  - {name: lora8, type: fine-tuned, model: tiny-llama, parameters: {lora_rank: 8}}
  - {name: lora16, type: fine-tuned, model: tiny-llama, parameters: {lora_rank: 16, lr: 2e-3}}
  - {name: base, type: control, model: tiny-llama}
"""


@pytest.fixture
def trained(dagster_home, tmp_path, tiny_model_dir, capitalization_data, slurm_cluster):
    """The three runs registered, configured and trained."""
    experiment = register_tiny_experiment(
        tmp_path, tiny_model_dir, capitalization_data, prefix="shared", runs=RUNS
    )
    materialize(experiment, "run_config,checkpoint")
    return experiment


def pool(limit: int) -> dict:
    """Launcher config with a fresh concurrency pool of ``limit`` slots."""
    name = f"test_{uuid.uuid4().hex[:8]}"
    return {"resources": {"launcher": {"config": {"pool": name, "pool_limit": limit}}}}


def materialize_args(experiment: Experiment, selection: str, runs: list[str] | None = None):
    keys = [experiment.partition_key(run) for run in (runs or [r.name for r in experiment.runs])]
    return [
        *("asset", "materialize", "-m", "ck_dagster", "--select", selection),
        *("--partition-range", f"{keys[0]}...{keys[-1]}"),
    ]


def materialize(
    experiment: Experiment,
    selection: str,
    config: dict | None = None,
    runs: list[str] | None = None,
) -> str:
    args = materialize_args(experiment, selection, runs)
    if config:
        args += ["--config-json", json.dumps(config)]
    done = run_command(["dagster", *args], timeout=600, env={"CK_LAUNCHER": "slurm"})
    return done.stdout + done.stderr


def evaluations(experiment: Experiment, run: str) -> list:
    with DagsterInstance.get() as instance:
        return instance.fetch_materializations(
            AssetRecordsFilter(asset_key=EVAL, asset_partitions=[experiment.partition_key(run)]),
            limit=10,
        ).records


def metadata(record) -> dict:
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def answers(experiment: Experiment, run: str) -> dict[str, list[tuple[list, str]]]:
    """Each evaluation's samples as (prompt tokens the model got, answer), by task/label."""
    run_dir = experiment.run_dir(next(r for r in experiment.runs if r.name == run))
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    found = {}
    for evaluation in results["evaluations"]:
        log = read_eval_log(str(run_dir / evaluation["log"]))
        found[f"{evaluation['task']}/{evaluation['label']}"] = [
            (
                [event.call.request for event in sample.events if event.event == "model"],
                sample.output.completion,
            )
            for sample in log.samples or []
        ]
    return found


def test_runs_of_one_base_share_a_job_when_the_pool_is_small_score_as_alone_and_are_followed(
    trained,
) -> None:
    runs = [run.name for run in trained.runs]
    log = materialize(trained, "eval_log", pool(1))
    launcher = SlurmLauncher()
    # no job of its own for any run: one job evaluated all three, on one load
    assert all(launcher.find(f"ck:{trained.name}/{run}:eval") == [] for run in runs)
    records = {run: evaluations(trained, run) for run in runs}
    assert all(len(found) == 1 for found in records.values()), records  # each recorded once
    [job_id] = {metadata(found[0])["job_id"] for found in records.values()}
    job = launcher.accounting(job_id)
    assert job.state is JobState.COMPLETED
    assert job.name.startswith(f"ck:{trained.name}/shared-"), job
    assert f"[lora8, lora16, base]: submitted job {job_id}" in log
    job_log = (trained.run_dir(trained.runs[0]) / "eval" / f"slurm-{job_id}.out").read_text()
    assert job_log.count("(model loaded)") == 1, job_log  # the base model, once for all
    assert job_log.count("(model already loaded)") == 4, job_log  # 2 epochs x 2 runs
    assert all(f"eval {trained.partition_key(run)}: all" in job_log for run in runs)
    # recorded as its results landed: the first run well before the job ended
    first = records["lora8"][0].timestamp
    assert first < records["base"][0].timestamp
    shared = {run: answers(trained, run) for run in runs}

    # the same evaluations, a job per run (a pool with room for each): the same prompts
    # and the same answers
    materialize(trained, "eval_log", {**pool(25), "ops": {"eval_log": {"config": {"force": True}}}})
    for run in runs:
        [alone] = launcher.find(f"ck:{trained.name}/{run}:eval")
        assert metadata(evaluations(trained, run)[0])["job_id"] == alone.job_id
        assert answers(trained, run) == shared[run], run
        assert shared[run] and all(samples for samples in shared[run].values())

    # (one test, to train once) the process following a shared job killed: a process that
    # then evaluates one of its runs alone follows that job instead of starting another
    follow_the_shared_job_after_a_kill(trained)


def follow_the_shared_job_after_a_kill(trained: Experiment) -> None:
    """Evaluate the runs again in a shared job, SIGKILL the process following it while it
    runs, then evaluate the second run alone."""
    marker = trained.run_dir(trained.runs[1]) / "eval" / SHARED_JOB
    marker.unlink(missing_ok=True)
    again = {**pool(1), "ops": {"eval_log": {"config": {"force": True}}}}
    process = subprocess.Popen(
        [
            str(BIN / "dagster"),
            *materialize_args(trained, "eval_log"),
            "--config-json",
            json.dumps(again),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "CK_LAUNCHER": "slurm"},
        start_new_session=True,
    )
    launcher = SlurmLauncher()
    try:
        deadline = time.monotonic() + 120
        job = None
        while job is None or job.state is not JobState.RUNNING:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the shared job never ran"
            if marker.is_file():
                found = launcher.find(json.loads(marker.read_text())["job_name"])
                job = max(found, key=lambda status: int(status.job_id))  # the second one
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    # the second run alone, by a new process: its claim is free (its holder is gone), and it
    # follows the job that evaluates it rather than starting one
    before = launcher.find(f"ck:{trained.name}/lora16:eval")
    log = materialize(trained, "eval_log", again, runs=["lora16"])
    assert f"re-attached to job {job.job_id}" in log, log
    assert launcher.find(f"ck:{trained.name}/lora16:eval") == before  # no job of its own
    record = evaluations(trained, "lora16")[0]
    assert metadata(record)["job_id"] == job.job_id and metadata(record)["samples"] > 0
    assert launcher.accounting(job.job_id).state is JobState.COMPLETED
