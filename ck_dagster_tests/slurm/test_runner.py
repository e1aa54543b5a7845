"""JobRunner on both back-ends: adopt, re-attach, resubmit, OOM retry, interrupt, throttle."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.follow import JobFollower
from ck_dagster.slurm.launcher import Launcher
from ck_dagster.slurm.local import LocalLauncher
from ck_dagster.slurm.runner import JobOutcome, JobRequest, JobRunner
from ck_dagster.slurm.states import JobState
from ck_dagster_tests.slurm.jobs import job_script, unique_name, wait_for_state


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def launcher(request, tmp_path) -> Launcher:
    if request.param == "slurm":
        request.getfixturevalue("slurm_cluster")
        return SlurmLauncher(retry_total_s=30.0)
    return LocalLauncher(tmp_path / "state")


def runner(launcher: Launcher, messages: list[str] | None = None, **kwargs) -> JobRunner:
    seen = messages if messages is not None else []
    return JobRunner(
        launcher,
        poll_initial=0.3,
        poll_max=1.0,
        slot_wait=0.3,
        on_event=lambda key, message: seen.append(f"{key}: {message}"),
        **kwargs,
    )


def writes_done(folder: Path, body: str = "", *sbatch: str, name: str = "job.sh") -> JobRequest:
    """A request whose job writes `done` (after `body`); it is done when that file exists."""
    script = job_script(folder, f"{body}\necho ok > done", *sbatch, name=name)
    return JobRequest(
        key=f"exp/{folder.name}",
        script=script,
        job_name=unique_name(),
        is_done=lambda: (folder / "done").exists(),
    )


def names_in_queue(launcher: Launcher, name: str) -> list[str]:
    return [s.job_id for s in launcher.find(name)]


def test_runs_adopts_and_forces(launcher, tmp_path):
    request = writes_done(tmp_path)
    outcome = runner(launcher).run([request])[request.key]
    assert outcome.status == "completed" and outcome.accounting.state is JobState.COMPLETED
    assert (tmp_path / "done").exists()

    again = runner(launcher).run([request])[request.key]
    assert again.status == "adopted" and again.job_id == outcome.job_id
    assert len(names_in_queue(launcher, request.job_name)) == 1  # nothing new submitted

    request.force = True
    forced = runner(launcher).run([request])[request.key]
    assert forced.status == "completed" and forced.job_id != outcome.job_id


def test_reattaches_instead_of_submitting_twice(launcher, tmp_path):
    request = writes_done(tmp_path, "sleep 3")
    earlier = launcher.submit(request.script, job_name=request.job_name)  # a killed process's
    messages: list[str] = []
    outcome = runner(launcher, messages).run([request])[request.key]
    assert outcome.status == "completed" and outcome.job_id == earlier
    assert outcome.attempts[0].reattached
    assert names_in_queue(launcher, request.job_name) == [earlier]
    assert any("re-attached to job" in m for m in messages)


def test_each_outcome_is_reported_as_its_job_ends(launcher, tmp_path):
    quick, slow, failing = (tmp_path / name for name in ("quick", "slow", "failing"))
    for folder in (quick, slow, failing):
        folder.mkdir()
    requests = [writes_done(quick), writes_done(slow, "sleep 6"), writes_done(failing, "exit 2")]
    reported: list[tuple[str, str, bool]] = []  # key, status, whether the slow job was done

    def on_outcome(outcome) -> None:
        reported.append((outcome.key, outcome.status, (slow / "done").exists()))

    runner(launcher, on_outcome=on_outcome).run(requests)
    assert sorted(reported) == [
        ("exp/failing", "failed", False),
        ("exp/quick", "completed", False),
        ("exp/slow", "completed", True),
    ]


def test_a_launched_job_is_taken_over_by_a_later_run(launcher, tmp_path):
    request = writes_done(tmp_path, "sleep 3")
    job_id = runner(launcher).launch(request)
    assert job_id and not (tmp_path / "done").exists()  # started, not followed
    messages: list[str] = []
    outcome = runner(launcher, messages).run([request])[request.key]
    assert outcome.status == "completed" and outcome.job_id == job_id
    assert any("re-attached to job" in m for m in messages)
    assert runner(launcher).launch(request) is None  # its outputs are in place
    assert names_in_queue(launcher, request.job_name) == [job_id]


def test_failure_carries_state_exit_code_and_log_tail(launcher, tmp_path):
    request = writes_done(tmp_path, 'echo "Traceback: KeyError: question" >&2; exit 3')
    outcome = runner(launcher).run([request])[request.key]
    assert outcome.status == "failed"
    assert "ended FAILED" in outcome.message and "exit code 3:0" in outcome.message
    assert "KeyError: question" in outcome.message and "KeyError" in outcome.log_tail


def test_interrupt_cancels_the_jobs(launcher, tmp_path):
    """An interruption while the runner waits (Ctrl-C, Dagster's termination) cancels its
    jobs. It is raised from the runner's own sleep, in the main thread, once the job runs: the
    signals that carry it in real use are tested end to end in assets/test_checkpoint.py."""
    request = writes_done(tmp_path, "sleep 60")
    job_ids: list[str] = []

    def sleep_until_running(seconds: float) -> None:
        found = launcher.find(request.job_name)
        if found and found[0].state is JobState.RUNNING:
            job_ids.append(found[0].job_id)
            raise KeyboardInterrupt
        time.sleep(seconds)

    follower = JobFollower(
        launcher,
        poll_initial=0.3,
        poll_max=1.0,
        cancel_on_interrupt=False,
        sleep=sleep_until_running,
    )
    with pytest.raises(KeyboardInterrupt):
        runner(launcher, follower=follower).run([request])
    assert job_ids
    wait_for_state(launcher, job_ids[0], "CANCELLED")


def test_slots_cap_jobs_in_the_queue(launcher, tmp_path):
    class OneSlot:
        holder: str | None = None
        peak = 0

        def acquire(self, key: str) -> bool:
            if self.holder in (None, key):
                self.holder = key
                return True
            return False

        def release(self, key: str) -> None:
            if self.holder == key:
                self.holder = None

    folders = [tmp_path / f"run{i}" for i in range(3)]
    for folder in folders:
        folder.mkdir()
    requests = [writes_done(folder, "sleep 1") for folder in folders]
    slots = OneSlot()
    outcomes = runner(launcher, slots=slots).run(requests)
    assert all(o.status == "completed" for o in outcomes.values())
    accounts = [launcher.accounting(o.job_id) for o in outcomes.values()]
    spans = sorted((a.start_time, a.end_time) for a in accounts)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"jobs overlapped: {spans}"
    assert slots.holder is None


@pytest.mark.slurm
def test_out_of_memory_is_retried_once_with_the_requests_arguments(slurm_cluster, tmp_path):
    """A real OUT_OF_MEMORY from the cgroup limit. The workload is a stand-in (memory that
    grows with its batch_size argument): the tiny model's memory does not depend on its batch."""
    if slurm_cluster.config("TaskPlugin") != "task/cgroup":
        pytest.skip("this cluster enforces no memory limit (no cgroup v1 memory controller)")
    launcher = SlurmLauncher(retry_total_s=30.0)
    body = (
        'batch=8; for arg in "$@"; do case $arg in batch_size=*) batch=${arg#*=};; esac; done\n'
        'echo "batch $batch"; head -c $((batch * 100))M /dev/zero | tail > /dev/null'
    )
    request = writes_done(tmp_path, body, "--mem=500M")
    request.oom_retry_args = lambda: ["batch_size=4", "gradient_accumulation_steps=2"]
    messages: list[str] = []
    outcome = runner(launcher, messages).run([request])[request.key]
    assert outcome.status == "completed" and outcome.oom_retried
    assert [a.state for a in outcome.attempts] == [JobState.OUT_OF_MEMORY, JobState.COMPLETED]
    assert outcome.attempts[1].args == ("batch_size=4", "gradient_accumulation_steps=2")
    assert any("ran out of memory: retrying once" in m for m in messages)


def run_failing_the_node(
    launcher: Launcher, request: JobRequest, node: str, messages: list[str], when
) -> JobOutcome:
    """Run ``request``, setting the node DOWN (its running jobs end NODE_FAIL) once ``when()``
    is true (at most 60 s on), and back up a second later."""

    def fail() -> None:
        deadline = time.monotonic() + 60
        while not when() and time.monotonic() < deadline:
            time.sleep(0.2)
        subprocess.run(
            ["scontrol", "update", f"nodename={node}", "state=down", "reason=ck_dagster test"],
            check=True,
        )
        time.sleep(1)
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"])

    thread = threading.Thread(target=fail, daemon=True)
    thread.start()
    try:
        return runner(launcher, messages).run([request])[request.key]
    finally:
        thread.join()
        subprocess.run(
            ["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True
        )


def running(launcher: Launcher, name: str) -> bool:
    found = launcher.find(name)
    return bool(found) and found[0].state is JobState.RUNNING


@pytest.mark.slurm
def test_a_requeueable_job_hit_by_a_node_failure_is_left_to_slurm(slurm_cluster, tmp_path):
    """SLURM requeues it (NODE_FAIL, then PENDING again): followed to its end, never resubmitted
    by us. (A job that is not requeueable is resubmitted: under a materialization, resuming from
    its saved epoch, in `assets/test_resume.py`.)"""
    launcher = SlurmLauncher(retry_total_s=60.0)
    request = writes_done(tmp_path, "sleep 20", "--requeue")
    messages: list[str] = []
    outcome = run_failing_the_node(
        launcher, request, slurm_cluster.node, messages, lambda: running(launcher, request.job_name)
    )
    assert outcome.status == "completed", messages
    jobs = names_in_queue(launcher, request.job_name)
    assert len(outcome.attempts) == 1 and jobs == [outcome.job_id]


@pytest.mark.slurm
def test_a_job_stopped_after_writing_its_outputs_is_adopted_not_resubmitted(
    slurm_cluster, tmp_path
):
    """The node set down (NODE_FAIL, not requeueable) once the job has written its outputs
    and lingers (as a training job may while it exits): adopted, nothing resubmitted."""
    launcher = SlurmLauncher(retry_total_s=60.0)
    request = writes_done(tmp_path, "", "--no-requeue")
    request.script.write_text(request.script.read_text() + "sleep 60\n")
    messages: list[str] = []
    outcome = run_failing_the_node(
        launcher, request, slurm_cluster.node, messages, (tmp_path / "done").exists
    )
    assert outcome.ok and [a.state for a in outcome.attempts] == [JobState.NODE_FAIL], messages
    assert names_in_queue(launcher, request.job_name) == [outcome.job_id]
    assert any("after writing all its outputs: adopted them" in m for m in messages), messages
