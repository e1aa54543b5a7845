"""Faults produced for real on the test cluster, through `dagster asset materialize`: a cgroup
out-of-memory kill, preemption, controller outages, Ctrl-C."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ck_dagster.experiment.load import load_experiment
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.states import JobState
from ck_dagster_tests.assets.test_checkpoint import (  # noqa: F401  (the fixture)
    EVALUATION,
    LONG_RUN,
    TRAINING,
    experiment,
    jobs_named,
    latest,
    materialize,
    start_materialize,
    wait_cancelled,
    wait_running,
)
from ck_dagster_tests.assets.test_claims import SHORT_RUN
from ck_dagster_tests.fixtures.dagster import run_command
from ck_dagster_tests.fixtures.experiments import random_words, write_tiny_experiment

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: an odd batch: 2025 sequences of 256 tokens need far more than 3.5 GB on the tiny model,
#: the retry's 2025 / 3 = 675 about 3 GB
OOM_RUN = """
  - {name: big, type: fine-tuned, model: tiny-llama, compute: {mem: 3500M},
     parameters: {batch_size: 2025, epochs: 1, max_steps_per_epoch: 1}}
"""


def test_out_of_memory_is_retried_with_a_smaller_batch_and_adopted(
    dagster_home, tmp_path, tiny_model_dir, slurm_cluster
) -> None:
    """A batch that does not fit under --mem=3500M is killed by the cgroup (OUT_OF_MEMORY), then
    trained with a third of the batch (2025 is odd) and three times the accumulation; a second
    materialization adopts it."""
    assert slurm_cluster.config("TaskPlugin") == "task/cgroup", "the test cluster lacks cgroups"
    file = write_tiny_experiment(
        tmp_path,
        tiny_model_dir,
        random_words(tmp_path / "long.json", rows=2025, letters=300),
        name=f"oom_{uuid.uuid4().hex[:6]}",
        runs=OOM_RUN,
    )
    run_command(["ck-dagster", "register", file])
    exp = load_experiment(file)
    partition = exp.partition_key("big")
    materialize("run_config,checkpoint", [partition])
    first, second = sorted(jobs_named(exp, "big"), key=lambda s: int(s.job_id))
    assert (first.state, second.state) == (JobState.OUT_OF_MEMORY, JobState.COMPLETED)
    metadata = latest(partition)
    assert metadata["oom_retry"] and metadata["job_id"] == second.job_id
    assert [(a["job_id"], a["state"], a["args"]) for a in metadata["attempts"]] == [
        (first.job_id, "OUT_OF_MEMORY", []),
        (second.job_id, "COMPLETED", ["batch_size=675", "gradient_accumulation_steps=3"]),
    ]
    assert metadata["oom_retry_note"].startswith(f"job {first.job_id} ran out of memory")
    assert SlurmLauncher().accounting(second.job_id).state is JobState.COMPLETED

    materialize("checkpoint", [partition])  # trained with the retry's batch: adopted
    assert latest(partition)["status"] == "adopted"
    assert len(jobs_named(exp, "big")) == 2


def test_the_default_pool_holds_jobs_back_and_frees_a_killed_runs_slot(experiment) -> None:  # noqa: F811  (the imported fixture)
    """`slurm_jobs` at 1 slot: a second run waits (and says so) while the first one's job is
    in the queue; once that run is killed (SIGKILL, its job cancelled), its slot is freed and
    the waiting run's job submitted."""
    exp = experiment(LONG_RUN + SHORT_RUN)
    run_command(["dagster", "instance", "concurrency", "set", "slurm_jobs", "1"])
    holder = start_materialize(exp.partition_key("long"))
    long_job = wait_running(exp, "long")
    waiting = start_materialize(exp.partition_key("one"))
    lines = []
    assert waiting.stdout is not None
    for line in waiting.stdout:
        lines.append(line)
        if "waiting for a free slot of the job pool" in line:
            break
    assert jobs_named(exp, "one") == [], "submitted although the only slot was taken"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    SlurmLauncher().cancel(long_job)
    output = "".join(lines) + waiting.communicate(timeout=600)[0]
    assert waiting.returncode == 0, output
    assert "freed pool slots of run" in output
    [job] = jobs_named(exp, "one")
    assert job.state is JobState.COMPLETED
    started = SlurmLauncher().accounting(job.job_id).start_time
    ended = SlurmLauncher().accounting(long_job).end_time
    assert started and ended and started >= ended, "both jobs were in the queue at once"


@pytest.mark.parametrize("step", [TRAINING, EVALUATION], ids=["training", "evaluation"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_materialization_cancels_its_job(experiment, step, sig) -> None:  # noqa: F811  (the imported fixture)
    """SIGINT, as Ctrl-C in a terminal sends it, or SIGTERM, to `dagster asset materialize` of
    a training or an evaluation step while its job runs."""
    exp = experiment(LONG_RUN)
    step.prepare(exp, "long")
    process = start_materialize(exp.partition_key("long"), step)
    job_id = wait_running(exp, "long", step=step)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert f"cancelled job(s) {job_id}" in output, output
    wait_cancelled(job_id)
    assert len(jobs_named(exp, "long", step)) == 1


class SbatchGate:
    """A gate in front of the real ``sbatch`` (first on PATH for the materializations): each
    submission waits until the test opens the gate, then runs the real sbatch, whose exit
    status and message are recorded. Lets a test take the controller down exactly while a
    materialization submits; ``sbatch --test-only`` (the preflight) passes straight through."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        real = shutil.which("sbatch")
        assert real, "no sbatch on PATH"
        folder.mkdir()
        script = folder / "sbatch"
        real, here = shlex.quote(real), shlex.quote(str(folder))
        script.write_text(f"""#!/bin/bash
case " $* " in *" --test-only "*) exec {real} "$@";; esac
touch {here}/arrived
while [ ! -e {here}/open ]; do sleep 0.2; done
{real} "$@" 2>{here}/stderr; status=$?
cat {here}/stderr >&2
echo "$status $(tr '\\n' ' ' <{here}/stderr)" >>{here}/returned
exit $status
""")
        script.chmod(0o755)

    def wait_arrived(self, process: subprocess.Popen[str], limit: float = 300) -> None:
        """Wait until a submission is held at the gate."""
        deadline = time.monotonic() + limit
        while not (self.folder / "arrived").exists():
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "no submission reached the gate"
            time.sleep(0.2)

    def open(self) -> None:
        (self.folder / "open").touch()

    def returned(self, count: int = 0, limit: float = 120) -> list[str]:
        """Each real sbatch's exit status and message, once at least ``count`` have run."""
        deadline = time.monotonic() + limit
        while True:
            path = self.folder / "returned"
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= count:
                return lines
            assert time.monotonic() < deadline, f"{len(lines)} of {count} sbatch calls returned"
            time.sleep(0.2)


@pytest.fixture
def sbatch_gate(tmp_path, monkeypatch) -> SbatchGate:
    gate = SbatchGate(tmp_path / "sbatch-gate")
    monkeypatch.setenv("PATH", f"{gate.folder}{os.pathsep}{os.environ['PATH']}")
    return gate


def test_a_controller_down_during_sbatch_is_retried_and_makes_one_job(
    experiment,  # noqa: F811  (the imported fixture)
    slurm_cluster,
    sbatch_gate,
) -> None:
    """slurmctld stopped while the materialization submits: sbatch cannot connect, is retried
    with backoff, and goes through once slurmctld is back; one job, trained."""
    exp = experiment(SHORT_RUN)
    partition = exp.partition_key("one")
    process = start_materialize(partition)
    sbatch_gate.wait_arrived(process)
    with slurm_cluster.controller_down():
        sbatch_gate.open()
        [refused] = sbatch_gate.returned(1)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert refused.startswith("1 ") and "unable to contact slurm controller" in refused.lower()
    assert "checkpoint - sbatch: controller not answering" in output, output  # the run's log
    *_, accepted = sbatch_gate.returned()
    assert accepted.split() == ["0"], sbatch_gate.returned()
    [job] = jobs_named(exp, "one")
    assert job.state is JobState.COMPLETED
    assert latest(partition)["job_id"] == job.job_id


def test_a_submission_whose_answer_was_lost_is_adopted_not_sent_again(
    experiment,  # noqa: F811  (the imported fixture)
    slurm_cluster,
    sbatch_gate,
) -> None:
    """slurmctld hung while the materialization submits: sbatch's request is taken in, its
    answer never comes (sbatch times out), and slurmctld queues the job once it goes on. The
    job is found by its name and adopted; sbatch is not run again."""
    exp = experiment(SHORT_RUN)
    partition = exp.partition_key("one")
    process = start_materialize(partition)
    sbatch_gate.wait_arrived(process)
    with slurm_cluster.controller_hung():
        sbatch_gate.open()
        [lost] = sbatch_gate.returned(1)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert lost.startswith("1 ") and "socket timed out" in lost.lower(), lost
    [job] = jobs_named(exp, "one")
    assert job.state is JobState.COMPLETED
    assert f"checkpoint - sbatch timed out but job {job.job_id} " in output, output
    assert sbatch_gate.returned() == [lost], "sbatch was run again"
    assert latest(partition)["job_id"] == job.job_id


def test_a_controller_restart_during_a_materialization_is_followed_through(
    experiment,  # noqa: F811  (the imported fixture)
    slurm_cluster,
) -> None:
    """slurmctld stopped for 25 s (longer than SLURM's clients retry by themselves) and
    started again while the job trains: the materialization keeps following its job (status
    calls retried meanwhile), also when the job ends during the outage, and succeeds."""
    exp = experiment(LONG_RUN)
    partition = exp.partition_key("long")
    fast = {"resources": {"launcher": {"config": {"poll_max": 2.0}}}}  # the outage is felt
    process = start_materialize(partition, config=fast)
    job_id = wait_running(exp, "long")
    slurm_cluster.restart_controller(down_s=25)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "checkpoint - squeue: controller not answering" in output, output
    [job] = jobs_named(exp, "long")
    assert job.job_id == job_id and job.state is JobState.COMPLETED
    assert latest(partition)["job_id"] == job_id
