"""Jobs stopped from outside, for real, under `dagster asset materialize`: preempted by a job of
the test cluster's higher-priority partition, killed by a node set down, ended by their time
limit. Each is resubmitted and resumes from its last saved epoch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.states import JobState
from ck_dagster_tests.assets.test_checkpoint import (  # noqa: F401  (the fixture)
    experiment,
    jobs_named,
    latest,
)
from ck_dagster_tests.fixtures.dagster import BIN, run_command
from ck_dagster_tests.fixtures.experiments import random_words

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: two epochs of 80 steps of 8 100-letter words (about 5 s each here; on the usual short words
#: under a second, and a preemption once landed after the last epoch): long enough to be caught
#: between its first saved epoch and its end. Fewer steps than the data's 100 batches:
#: torchtune 0.6.1 restores its step count on resume only then (its LR schedule restarts
#: otherwise).
STEADY_RUN = """
  - {name: steady, type: fine-tuned, model: tiny-llama,
     parameters: {lora_rank: 8, epochs: 2, batch_size: 8, max_steps_per_epoch: 80}}
"""
STEPS_PER_EPOCH = 80


def steady_words(folder: Path) -> Path:
    """The data STEADY_RUN trains on."""
    return random_words(folder / "words.json", rows=800, letters=100)


@pytest.fixture
def start() -> Iterator:
    """``start(partition, env, config)``: `dagster asset materialize` of one run's checkpoint in
    the background; one still running at the end is terminated (which cancels its jobs)."""
    processes: list[subprocess.Popen[str]] = []

    def materialize(partition: str, env: dict[str, str] | None = None, config: dict | None = None):
        args = [str(BIN / "dagster"), "asset", "materialize", "-m", "ck_dagster"]
        args += ["--select", "checkpoint", "--partition", partition]
        if config:
            args += ["--config-json", json.dumps(config)]
        processes.append(
            subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "CK_LAUNCHER": "slurm", **(env or {})},
            )
        )
        return processes[-1]

    yield materialize
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=120)


def wait_for(what: str, check, limit: float = 180.0, every: float = 0.2):
    """Poll ``check()`` until it returns something true; that value."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def first_epoch_saved(artifacts: Path) -> float:
    """Wait until epoch 0 and torchtune's recipe state are written; the adapter's mtime."""
    adapter = artifacts / "epoch_0" / "adapter_model.pt"
    state = artifacts / "recipe_state" / "recipe_state.pt"
    wait_for("epoch 0 to be saved", lambda: adapter.is_file() and state.is_file())
    return adapter.stat().st_mtime


def running_job(exp, run: str, other_than: set[str] = frozenset()) -> str:
    """The id of the run's job once it runs (skipping ``other_than``)."""

    def find() -> str | None:
        for job in jobs_named(exp, run):
            if job.job_id not in other_than and job.state is JobState.RUNNING:
                return job.job_id
        return None

    return wait_for(f"a running job of {run}", find, every=0.5)


def partition_setting(name: str, key: str) -> str | None:
    """``key`` of partition ``name`` as scontrol shows it; None when there is no such partition."""
    shown = subprocess.run(
        ["scontrol", "show", "partition", name, "--oneliner"], capture_output=True, text=True
    )
    if shown.returncode != 0:
        return None
    fields = dict(item.partition("=")[::2] for item in shown.stdout.split())
    return fields.get(key)


def scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def preemptor(slurm_cluster, tmp_path) -> Iterator:
    """``preempt()`` submits a job to a partition `urgent` that needs the whole node, so that
    SLURM preempts (cancels: PREEMPTED) the jobs running in `debug`; it ends in 2 s.

    The cluster's PreemptType=preempt/partition_prio ranks partitions by PriorityTier: `urgent`
    (tier 10 over the others' 1) is created here with scontrol, and `debug` given
    PreemptMode=CANCEL; both are put back as found (see scripts/local-slurm/start.sh)."""
    created = partition_setting("urgent", "PartitionName") is None
    mode = partition_setting("debug", "PreemptMode")
    if created:
        scontrol(
            "create",
            "PartitionName=urgent",
            f"Nodes={slurm_cluster.node}",
            "PriorityTier=10",
            "PreemptMode=OFF",
            "Hidden=YES",
            "State=UP",
        )
    if mode != "CANCEL":
        scontrol("update", "PartitionName=debug", "PreemptMode=CANCEL")
    submitted: list[str] = []

    def preempt() -> str:
        result = subprocess.run(
            ["sbatch", "--parsable", "--partition=urgent", "--exclusive", "--job-name=ck-preempt"]
            + [f"--output={tmp_path}/preempt-%j.out", "--wrap", "sleep 2"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        submitted.append(result.stdout.strip())
        return submitted[-1]

    try:
        yield preempt
    finally:
        for job_id in submitted:
            subprocess.run(["scancel", job_id], capture_output=True)
        if mode != "CANCEL":
            scontrol("update", "PartitionName=debug", f"PreemptMode={mode or 'REQUEUE'}")
        if created:
            wait_for("the preempting jobs to end", lambda: not any_job_in("urgent"), limit=60)
            scontrol("delete", "PartitionName=urgent")


def any_job_in(partition: str) -> bool:
    return bool(
        subprocess.run(
            ["squeue", "-h", "-p", partition, "-o", "%i"], capture_output=True, text=True
        ).stdout.strip()
    )


def ended(job_id: str, state: JobState) -> None:
    """Wait until SLURM's accounting says ``job_id`` ended in ``state``."""
    wait_for(
        f"job {job_id} to end {state.value}",
        lambda: SlurmLauncher().accounting(job_id).state is state,
        limit=60,
        every=1.0,
    )


def assert_went_on_at(job_log: Path, artifacts: Path, epoch: int, steps_per_epoch: int) -> None:
    """torchtune's own output shows that the job resumed at ``epoch`` (0-based): it loaded the
    adapter of the epoch before, its progress bars start at that epoch (torchtune shows it
    1-based), and its metric log starts after the epochs before."""
    text = job_log.read_text()
    assert "Loading the recipe state using:" in text, text[-2000:]
    assert f"adapter_checkpoint: {artifacts}/epoch_{epoch - 1}/adapter_model.pt" in text
    bar = re.search(r"(\d+)\|(\d+)\|Loss:", text)  # "epoch|step|Loss: ..."
    assert bar and int(bar[1]) == epoch + 1 and int(bar[2]) > epoch * steps_per_epoch, bar
    logs = sorted((artifacts / "logs").glob("log_*.txt"), key=lambda p: p.stat().st_mtime)
    first_step = int(logs[-1].read_text().split("Step ", 1)[1].split(" ", 1)[0])
    assert first_step > epoch * steps_per_epoch, logs[-1].read_text()[:300]


def assert_resumed(exp, partition: str, first: str, state: JobState, epoch_0_mtime: float):
    """The run's second job went on at epoch 1 from the first one's epoch 0 (left untouched),
    all epochs are saved, the metadata says which job ended how and why the next was
    submitted, and a new materialization adopts the outputs as the run's own."""
    artifacts = exp.run_dir("steady") / "artifacts"
    jobs = sorted(jobs_named(exp, "steady"), key=lambda s: int(s.job_id))
    assert [j.job_id for j in jobs][0] == first
    second = jobs[-1]
    assert SlurmLauncher().accounting(first).state is state
    assert second.state is JobState.COMPLETED
    assert_went_on_at(second.log_path, artifacts, epoch=1, steps_per_epoch=STEPS_PER_EPOCH)
    for epoch in (0, 1):
        assert (artifacts / f"epoch_{epoch}" / "adapter_model.pt").is_file()
    assert (artifacts / "epoch_0" / "adapter_model.pt").stat().st_mtime == epoch_0_mtime
    metadata = latest(partition)
    attempts = metadata["attempts"]
    assert [(a["job_id"], a["state"]) for a in attempts] == [
        (first, state.value),
        (second.job_id, "COMPLETED"),
    ]
    why = f"job {first} ended {state.value}: resumed from epoch_0, training on at epoch 1"
    assert attempts[1]["why"].startswith(why), attempts
    assert "resume_from_checkpoint=True" in attempts[1]["args"]
    assert metadata["resubmissions"].startswith(f"job {second.job_id}: {why}")
    assert metadata["epochs_saved"] == 2

    run_command(
        ["dagster", "asset", "materialize", "-m", "ck_dagster", "--select", "checkpoint"]
        + ["--partition", partition],
        env={"CK_LAUNCHER": "slurm"},
        timeout=300,
    )
    assert latest(partition)["status"] == "adopted"
    assert len(jobs_named(exp, "steady")) == len(jobs)


def test_a_preempted_job_resumes_from_its_saved_epoch(
    experiment,  # noqa: F811  (the imported fixture)
    preemptor,
    start,
    tmp_path,
) -> None:
    """Preempted (PREEMPTED, for real: a job of a higher-priority partition took the node)
    after epoch 0 was saved: resubmitted with torchtune's resume, it trains epoch 1 only."""
    exp = experiment(STEADY_RUN, data=steady_words(tmp_path))
    partition = exp.partition_key("steady")
    process = start(partition)
    first = running_job(exp, "steady")
    epoch_0 = first_epoch_saved(exp.run_dir("steady") / "artifacts")
    preemptor()
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert f"job {first} ended PREEMPTED: resumed from epoch_0" in output
    assert_resumed(exp, partition, first, JobState.PREEMPTED, epoch_0)


def test_preempted_past_the_resubmission_limit_the_step_fails_clearly(
    experiment,  # noqa: F811  (the imported fixture)
    tmp_path,
    preemptor,
    start,
) -> None:
    """With `max_resubmits: 1`, a run preempted twice is not resubmitted a second time: the
    step fails, saying so and how to go on; no job is left in the queue. Materialized again,
    the run goes on from its saved epoch."""
    exp = experiment(STEADY_RUN, data=steady_words(tmp_path))
    partition = exp.partition_key("steady")
    config = {"resources": {"launcher": {"config": {"max_resubmits": 1}}}}
    process = start(partition, config=config)
    first = running_job(exp, "steady")
    first_epoch_saved(exp.run_dir("steady") / "artifacts")
    preemptor()
    second = running_job(exp, "steady", other_than={first})
    preemptor()
    output, _ = process.communicate(timeout=600)
    assert process.returncode != 0, output
    ended(second, JobState.PREEMPTED)
    assert (
        f"job {second} ended PREEMPTED, and {partition} was resubmitted 1 time(s) already, "
        "the limit: not resubmitting it again. Materialize it again to go on (resumed from "
        "epoch_0, training on at epoch 1)"
    ) in output, output
    assert {j.job_id for j in jobs_named(exp, "steady")} == {first, second}
    assert all(j.state.is_final for j in jobs_named(exp, "steady"))

    run_command(  # materialized again: goes on from epoch 0, not from scratch
        ["dagster", "asset", "materialize", "-m", "ck_dagster", "--select", "checkpoint"]
        + ["--partition", partition],
        env={"CK_LAUNCHER": "slurm"},
        timeout=300,
    )
    metadata = latest(partition)
    [attempt] = metadata["attempts"]
    assert attempt["why"] == "resumed from epoch_0, training on at epoch 1", attempt
    assert metadata["status"] == "completed" and metadata["epochs_saved"] == 2


def test_a_node_failure_under_a_materialization_resumes_from_the_saved_epoch(
    experiment,  # noqa: F811  (the imported fixture)
    tmp_path,
    slurm_cluster,
    start,
) -> None:
    """The node set down under the running job (not requeueable: SBATCH_NO_REQUEUE) after
    epoch 0 was saved: the job ends NODE_FAIL; once the node is back, the resubmitted job
    resumes at epoch 1."""
    exp = experiment(STEADY_RUN, data=steady_words(tmp_path))
    partition = exp.partition_key("steady")
    process = start(partition, env={"SBATCH_NO_REQUEUE": "1"})
    node = slurm_cluster.node
    try:
        first = running_job(exp, "steady")
        epoch_0 = first_epoch_saved(exp.run_dir("steady") / "artifacts")
        subprocess.run(
            ["scontrol", "update", f"nodename={node}", "state=down", "reason=ck_dagster test"],
            check=True,
        )
        ended(first, JobState.NODE_FAIL)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert f"job {first} ended NODE_FAIL: resumed from epoch_0" in output
    assert_resumed(exp, partition, first, JobState.NODE_FAIL, epoch_0)


#: 20 epochs of 90 steps of 8 sequences of ~250 tokens (6 s each on an idle machine, several
#: times that on a busy one) under a one-minute limit: some epochs are saved before SLURM stops
#: the job (65-85 s after it starts), and more are left however busy the machine is.
TIMED_RUN = """
  - {name: timed, type: fine-tuned, model: tiny-llama, compute: {time: "1"},
     parameters: {lora_rank: 8, epochs: 20, batch_size: 8, max_steps_per_epoch: 90}}
"""
TIMED_EPOCHS, TIMED_STEPS = 20, 90


#: one epoch of 2000 steps (over two minutes on an idle machine) under a one-minute limit:
#: SLURM stops the job before any epoch is saved.
UNSAVED_RUN = """
  - {name: unsaved, type: fine-tuned, model: tiny-llama, compute: {time: "1"},
     parameters: {lora_rank: 8, epochs: 1, batch_size: 8, max_steps_per_epoch: 2000}}
"""


def test_timed_out_jobs_resume_with_more_time_or_fail_clearly(
    experiment,  # noqa: F811  (the imported fixture)
    tmp_path,
    start,
) -> None:
    """Two jobs over their one-minute limit, produced at once (SLURM ends jobs by their time
    limit only after a minute: together they take one wait, not two).

    `timed` ends TIMEOUT after saving some epochs; its cluster profile's `max_time: "10"` lets
    the resumed job ask for twice the time (0:02:00), and training goes on from the last saved
    epoch to the end (on a busy machine after more TIMEOUTs, each resumed with twice the time
    again: up to 4 resubmissions here).

    `unsaved` ends TIMEOUT before saving an epoch, and no cluster profile allows it more time:
    the same job would only run out of time again, so nothing is resubmitted and the step
    fails naming the TIMEOUT."""
    timed = experiment(TIMED_RUN, data=steady_words(tmp_path))
    unsaved = experiment(
        UNSAVED_RUN, data=random_words(tmp_path / "more-words.json", rows=16000, letters=100)
    )
    timed_key, unsaved_key = timed.partition_key("timed"), unsaved.partition_key("unsaved")
    profile = tmp_path / "site.yaml"
    profile.write_text('base: della\nmax_time: "10"\n')
    config = {"resources": {"launcher": {"config": {"max_resubmits": 4}}}}
    resumes = start(timed_key, env={"CK_CLUSTER_PROFILE": str(profile)}, config=config)
    fails = start(unsaved_key)

    output, _ = fails.communicate(timeout=600)
    assert fails.returncode != 0, output
    [job] = jobs_named(unsaved, "unsaved")
    assert job.state is JobState.TIMEOUT
    assert f"{unsaved_key}: job {job.job_id} ended TIMEOUT" in output, output[-3000:]
    artifacts = unsaved.run_dir("unsaved") / "artifacts"
    assert not list(artifacts.glob("epoch_*")), "an epoch was saved: make the epoch longer"

    output, _ = resumes.communicate(timeout=1200)
    assert resumes.returncode == 0, output
    jobs = sorted(jobs_named(timed, "timed"), key=lambda s: int(s.job_id))
    first = jobs[0].job_id
    assert SlurmLauncher().accounting(first).state is JobState.TIMEOUT, output
    assert jobs[-1].state is JobState.COMPLETED
    attempts = latest(timed_key)["attempts"]
    assert attempts[0]["state"] == "TIMEOUT" and attempts[-1]["state"] == "COMPLETED"
    resumed = attempts[1]
    assert resumed["time"] == "0:02:00", attempts
    assert resumed["why"].startswith(f"job {first} ended TIMEOUT: resumed from epoch_"), attempts
    assert resumed["why"].endswith(", with --time=0:02:00"), attempts
    epoch = int(resumed["why"].split("epoch_", 1)[1].split(",", 1)[0]) + 1
    artifacts = timed.run_dir("timed") / "artifacts"
    assert_went_on_at(jobs[1].log_path, artifacts, epoch, TIMED_STEPS)
    for saved in range(TIMED_EPOCHS):
        assert (artifacts / f"epoch_{saved}" / "adapter_model.pt").is_file(), saved
