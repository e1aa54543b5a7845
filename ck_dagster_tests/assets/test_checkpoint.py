"""The checkpoint asset through real SLURM and real `tune run` on the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus

from ck_dagster.experiment.load import load_experiment
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.states import JobState
from ck_dagster.training.submit import halved_batch_args
from ck_dagster_tests.fixtures.dagster import BIN, run_command
from ck_dagster_tests.fixtures.experiments import write_tiny_experiment
from ck_dagster_tests.fixtures.webserver import SERVE_TIMEOUT, WebServer

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: one run that trains long enough (~30 s) to be caught while running
LONG_RUN = """
  - {name: long, type: fine-tuned, model: tiny-llama,
     parameters: {lora_rank: 8, epochs: 4, max_steps_per_epoch: 40}}
"""


@pytest.fixture
def experiment(request, dagster_home, tmp_path, tiny_model_dir, capitalization_data, slurm_cluster):
    """Write (runs=..., data=... instead of the capitalization words), register and
    materialize run_config for a tiny experiment."""

    def make(runs: str | None = None, controls: str = "", data: Path | None = None):
        kwargs = {"runs": runs} if runs else {}
        file = write_tiny_experiment(
            tmp_path,
            tiny_model_dir,
            data or capitalization_data,
            name=f"tiny_{uuid.uuid4().hex[:6]}",
            controls=controls,
            **kwargs,
        )
        run_command(["ck-dagster", "register", file])
        experiment = load_experiment(file)
        materialize("run_config", keys(experiment))
        return experiment

    return make


def keys(experiment) -> list[str]:
    return [experiment.partition_key(run) for run in experiment.runs]


def materialize(
    selection: str, partitions: list[str], check: bool = True, config: dict | None = None
) -> subprocess.CompletedProcess[str]:
    args = [
        "dagster",
        "asset",
        "materialize",
        "-m",
        "ck_dagster",
        "--select",
        selection,
        "--partition-range",
        f"{partitions[0]}...{partitions[-1]}",
    ]
    if config:
        args += ["--config-json", json.dumps(config)]
    return run_command(args, check=check, timeout=600, env={"CK_LAUNCHER": "slurm"})


@dataclass(frozen=True)
class Step:
    """An asset whose materialization runs one SLURM job per run: the job name's last part,
    what its messages say the job does to the run, and what must be materialized first."""

    asset: str
    kind: str
    verb: str
    needs: str = ""

    def prepare(self, experiment, run: str) -> None:
        """Materialize what this step's job needs (a trained checkpoint for an evaluation)."""
        if self.needs:
            materialize(self.needs, [experiment.partition_key(run)])


TRAINING = Step("checkpoint", "train", "trained")
EVALUATION = Step("eval_log", "eval", "evaluated", needs="checkpoint")


def start_materialize(
    partition: str, step: Step = TRAINING, config: dict | None = None
) -> subprocess.Popen[str]:
    """`dagster asset materialize` of ``step`` for one partition, started, output piped."""
    return subprocess.Popen(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "ck_dagster",
            "--select",
            step.asset,
            "--partition",
            partition,
            *(["--config-json", json.dumps(config)] if config else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "CK_LAUNCHER": "slurm"},
    )


def latest(partition: str, asset: str = "checkpoint") -> dict:
    with DagsterInstance.get() as instance:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]),
            limit=1,
        ).records
        if not records:
            return {}
        return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def jobs_named(experiment, run: str, step: Step = TRAINING) -> list:
    return SlurmLauncher().find(f"ck:{experiment.name}/{run}:{step.kind}")


def wait_running(experiment, run: str, limit: float = 120, step: Step = TRAINING) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = jobs_named(experiment, run, step)
        if found and found[0].state is JobState.RUNNING:
            return found[0].job_id
        time.sleep(0.5)
    raise AssertionError(f"no running job for {run}: {jobs_named(experiment, run, step)}")


def wait_cancelled(job_id: str, limit: float = 60) -> None:
    """Wait until accounting (sacct, which records how every job ended) says CANCELLED."""
    deadline = time.monotonic() + limit
    while True:
        state = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if state[:1] == ["CANCELLED"]:
            return
        assert time.monotonic() < deadline, f"job {job_id} is {state} in sacct, not CANCELLED"
        time.sleep(0.5)


def test_trains_every_run_through_slurm_then_adopts(experiment) -> None:
    exp = experiment()
    materialize("checkpoint", keys(exp))
    for run in ("lora8", "lora16"):
        artifacts = exp.run_dir(run) / "artifacts"
        for epoch in (0, 1):
            assert list((artifacts / f"epoch_{epoch}").glob("*.safetensors")), (run, epoch)
        metadata = latest(exp.partition_key(run))
        [job] = jobs_named(exp, run)
        assert metadata["job_id"] == job.job_id and metadata["state"] == "COMPLETED"
        assert metadata["epochs_saved"] == 2 and metadata["final_loss"] > 0
        assert len(metadata["loss_curve"].records) >= 2
        assert Path(metadata["job_log"]).name == f"slurm-{job.job_id}.out"
    control = latest(exp.partition_key("base"))
    assert control["run_type"] == "control" and "tiny-llama" in str(control["checkpoint"])

    # materializing again adopts the checkpoints: no new job
    materialize("checkpoint", keys(exp))
    assert latest(exp.partition_key("lora8"))["status"] == "adopted"
    assert len(jobs_named(exp, "lora8")) == 1

    # retraining keeps the old checkpoints aside
    materialize(
        "checkpoint",
        [exp.partition_key("lora8")],
        config={"ops": {"checkpoint": {"config": {"retrain": True}}}},
    )
    assert len(jobs_named(exp, "lora8")) == 2
    kept = list(exp.run_dir("lora8").glob("artifacts.previous-*"))
    assert len(kept) == 1 and (kept[0] / "epoch_1").is_dir()
    assert "kept in" in latest(exp.partition_key("lora8"))["notes"]

    # checkpoints trained with another config are not adopted: trained again, old ones kept
    exp.file.write_text(exp.file.read_text().replace("lr: 2e-3", "lr: 3e-3"))
    run_command(["ck-dagster", "register", exp.file])
    materialize("run_config,checkpoint", [exp.partition_key("lora16")])
    assert len(jobs_named(exp, "lora16")) == 2
    metadata = latest(exp.partition_key("lora16"))
    assert metadata["status"] == "completed"
    assert "trained with another config (optimizer.lr)" in metadata["notes"]
    assert len(list(exp.run_dir("lora16").glob("artifacts.previous-*"))) == 1


@pytest.mark.parametrize("step", [TRAINING, EVALUATION], ids=["training", "evaluation"])
def test_terminating_from_the_ui_cancels_the_job(experiment, dagster_home, tmp_path, step) -> None:
    """Launched and terminated through the webserver's GraphQL API, as the UI's Materialize
    and Terminate buttons do (`dagster dev`: the daemon runs what is launched)."""
    from dagster_graphql import DagsterGraphQLClient

    exp = experiment(LONG_RUN)
    step.prepare(exp, "long")
    server = WebServer(
        dagster_home, tmp_path / "dagster-dev.log", env={"CK_LAUNCHER": "slurm"}, daemon=True
    )
    try:
        server.wait_until_serving(SERVE_TIMEOUT)
        client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)
        run_id = client.submit_job_execution(
            "__ASSET_JOB",
            repository_location_name="ck_dagster",
            repository_name="__repository__",
            asset_selection=[step.asset],
            tags={"dagster/partition": exp.partition_key("long")},
        )
        job_id = wait_running(exp, "long", limit=SERVE_TIMEOUT + 120, step=step)
        client.terminate_run(run_id)
        wait_cancelled(job_id)
        deadline = time.monotonic() + 60
        while client.get_run_status(run_id) is not DagsterRunStatus.CANCELED:
            assert time.monotonic() < deadline, client.get_run_status(run_id)
            time.sleep(0.5)
    finally:
        server.stop()
    with DagsterInstance.get() as instance:
        logs = [e.user_message for e in instance.all_logs(run_id)]
    assert any(f"cancelled job(s) {job_id}" in message for message in logs), logs
    assert len(jobs_named(exp, "long", step)) == 1


def test_reattaches_after_the_process_was_killed(experiment) -> None:
    exp = experiment(LONG_RUN)
    process = start_materialize(exp.partition_key("long"))
    job_id = wait_running(exp, "long")
    process.send_signal(signal.SIGKILL)
    process.wait()
    materialize("checkpoint", [exp.partition_key("long")])
    [job] = jobs_named(exp, "long")
    assert job.job_id == job_id and job.state is JobState.COMPLETED
    metadata = latest(exp.partition_key("long"))
    assert metadata["job_id"] == job_id and metadata["attempts"][0]["reattached"]


def test_requeued_job_is_followed_to_its_end(experiment) -> None:
    exp = experiment(LONG_RUN)
    process = start_materialize(exp.partition_key("long"))
    job_id = wait_running(exp, "long")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "REQUEUED" in output or "PENDING" in output
    assert latest(exp.partition_key("long"))["job_id"] == job_id
    assert len(jobs_named(exp, "long")) == 1


def test_a_failing_job_reports_its_log_tail_and_others_still_count(experiment) -> None:
    runs = """
  - {name: good, type: fine-tuned, model: tiny-llama}
  - {name: bad, type: fine-tuned, model: tiny-llama, parameters: {dataset.input_key: question}}
"""
    exp = experiment(runs)
    result = materialize("checkpoint", keys(exp), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "1 of 2 training jobs failed" in output
    assert f"{exp.name}/bad: job" in output and "ended FAILED" in output
    assert "KeyError" in output and "last lines of the log" in output
    assert latest(exp.partition_key("good"))["state"] == "COMPLETED"
    assert latest(exp.partition_key("bad")) == {}
    # noted on its partition as soon as its job ended
    with DagsterInstance.get() as instance:
        [noted] = instance.fetch_observations(
            AssetRecordsFilter(
                asset_key=AssetKey("checkpoint"), asset_partitions=[exp.partition_key("bad")]
            ),
            limit=1,
        ).records
    assert noted.asset_observation is not None
    note = {k: v.value for k, v in noted.asset_observation.metadata.items()}
    assert note["status"] == "failed" and "KeyError" in note["error"]


def test_a_request_the_cluster_cannot_run_is_refused_before_submitting(experiment) -> None:
    """The preflight asks the cluster first (sbatch's own refusal of a request that passes
    it is shown by test_slurm_cluster.py::test_refused_submission_carries_slurms_message)."""
    runs = """
  - {name: nowhere, type: fine-tuned, model: tiny-llama, compute: {partition: nosuchpart}}
"""
    exp = experiment(runs)
    result = materialize("checkpoint", keys(exp), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Nothing was submitted" in output
    assert "partition `nosuchpart` does not exist on this cluster" in output
    assert jobs_named(exp, "nowhere") == []


def test_the_pool_caps_jobs_in_the_queue(experiment) -> None:
    exp = experiment()
    config = {"resources": {"launcher": {"config": {"pool": f"test_{exp.name}", "pool_limit": 1}}}}
    materialize("checkpoint", keys(exp), config=config)
    launcher = SlurmLauncher()
    spans = sorted(
        (
            launcher.accounting(jobs_named(exp, run)[0].job_id).start_time,
            launcher.accounting(jobs_named(exp, run)[0].job_id).end_time,
        )
        for run in ("lora8", "lora16")
    )
    assert spans[1][0] >= spans[0][1], f"both jobs ran at once: {spans}"


def test_oom_retry_halves_the_batch_and_keeps_the_effective_batch() -> None:
    assert halved_batch_args({"batch_size": 8, "gradient_accumulation_steps": 2}) == [
        "batch_size=4",
        "gradient_accumulation_steps=4",
    ]
    assert halved_batch_args({"batch_size": 9}) == ["batch_size=3", "gradient_accumulation_steps=3"]
    assert halved_batch_args({"batch_size": 5, "gradient_accumulation_steps": 2}) == [
        "batch_size=1",
        "gradient_accumulation_steps=10",
    ]
    assert halved_batch_args({"batch_size": 1}) is None
