"""SlurmLauncher and JobFollower against the real test cluster (scripts/local-slurm)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from ck_dagster.fileio import tail
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.follow import JobFollower
from ck_dagster.slurm.launcher import SubmissionRefused
from ck_dagster.slurm.resources import Resources
from ck_dagster.slurm.script import JobScript, exit_marker
from ck_dagster.slurm.states import JobState
from ck_dagster_tests.slurm.jobs import follow, job_script, unique_name, wait_for_state

pytestmark = pytest.mark.slurm


@pytest.fixture
def slurm(slurm_cluster) -> SlurmLauncher:
    """A launcher that gives up on an unanswering controller quickly (tests stay bounded)."""
    return SlurmLauncher(retry_total_s=20.0, retry_initial_s=0.5)


@pytest.fixture(scope="module")
def timeout_job(slurm_cluster, tmp_path_factory) -> Iterator[str]:
    """A --time=1 job submitted as the module starts, so its ~70 s overlap the other tests
    (cancelled at the end when test_timeout was not selected)."""
    folder = tmp_path_factory.mktemp("timeout")
    script = job_script(folder, "echo started; sleep 300", "--time=1")
    launcher = SlurmLauncher()
    job_id = launcher.submit(script, job_name=unique_name("timeout"))
    yield job_id
    launcher.cancel(job_id)


@pytest.fixture(autouse=True, scope="module")
def _submit_timeout_job_first(timeout_job: str) -> None:
    """Request the TIMEOUT job before any other test of this module runs."""


def test_failed_job_carries_exit_code_and_log_tail(slurm, tmp_path):
    script = job_script(tmp_path, "echo 'loss went to nan' >&2; exit 1")
    job_id = slurm.submit(script, job_name=unique_name())
    status = follow(slurm, job_id)[0][job_id]
    assert status.state is JobState.FAILED and status.exit_code == "1:0"
    assert status.reason == "NonZeroExitCode"
    assert "loss went to nan" in tail(status.log_path, 5)
    assert "non-zero" in status.state.describe()


def test_cancelled_job(slurm, tmp_path):
    job_id = slurm.submit(job_script(tmp_path, "sleep 300"), job_name=unique_name())
    wait_for_state(slurm, job_id, "RUNNING")
    slurm.cancel(job_id)
    assert follow(slurm, job_id)[0][job_id].state is JobState.CANCELLED
    slurm.cancel(job_id)  # cancelling an ended job does nothing


def test_out_of_memory(slurm, slurm_cluster, tmp_path):
    script = job_script(tmp_path, "head -c 2000M /dev/zero | tail; echo survived", "--mem=200M")
    job_id = slurm.submit(script, job_name=unique_name())
    status = follow(slurm, job_id)[0][job_id]
    if slurm_cluster.config("TaskPlugin") == "task/cgroup":
        assert status.state is JobState.OUT_OF_MEMORY
        assert "--mem" in status.state.describe()
    else:  # without cgroups, the accounting poller kills it: FAILED
        assert status.state in (JobState.OUT_OF_MEMORY, JobState.FAILED)


def test_requeued_job_is_seen_pending_then_runs_again(slurm, tmp_path):
    script = job_script(tmp_path, 'echo "run $SLURM_RESTART_COUNT"; sleep 4')
    job_id = slurm.submit(script, job_name=unique_name())
    wait_for_state(slurm, job_id, "RUNNING")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    final, events = follow(slurm, job_id, limit_s=60)
    states = [e.status.state for e in events if e.kind == "state"]
    assert states[0] in (JobState.REQUEUED, JobState.PENDING, JobState.COMPLETING)
    assert JobState.RUNNING in states and states[-1] is JobState.COMPLETED
    assert tail(final[job_id].log_path) == "run 1"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--partition=nosuchpart", "Invalid partition name specified"),
        ("--gres=gpu:99", "Requested node configuration is not available"),
        ("--constraint=nosuchfeature", "Invalid feature specification"),
    ],
)
def test_refused_submission_carries_slurms_message(slurm, tmp_path, option, message):
    script = job_script(tmp_path, "true", option)
    with pytest.raises(SubmissionRefused, match=message):
        slurm.submit(script, job_name=unique_name())


def test_requests_of_real_model_sizes_are_accepted(slurm, tmp_path):
    """What a 70B run asks for (320G, 8 CPUs, 4 GPUs on gpu80) fits the test node."""
    script = job_script(
        tmp_path,
        'echo "gpus=$CUDA_VISIBLE_DEVICES"',
        "--mem=320G",
        "--cpus-per-task=8",
        "--gres=gpu:4",
        "--constraint=gpu80",
        "--partition=gpu",
    )
    job_id = slurm.submit(script, job_name=unique_name())
    status = follow(slurm, job_id)[0][job_id]
    assert status.state is JobState.COMPLETED
    assert tail(status.log_path) == "gpus=0,1,2,3"


def test_find_by_name_after_the_submitter_was_killed(slurm, tmp_path):
    script = job_script(tmp_path, "sleep 3; echo done")
    name = unique_name()
    submitter = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from ck_dagster.slurm.client import SlurmLauncher
        print(SlurmLauncher().submit(Path({str(script)!r}), job_name={name!r}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", submitter], capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    submitted = result.stdout.strip()
    found = slurm.find(name)
    assert [s.job_id for s in found] == [submitted]
    assert not found[0].state.is_final
    assert follow(slurm, found[0].job_id)[0][submitted].state is JobState.COMPLETED
    assert slurm.find(name)[0].state is JobState.COMPLETED
    assert slurm.find(unique_name()) == []


def test_statuses_of_many_jobs_take_one_call(slurm, tmp_path):
    script = job_script(tmp_path, "sleep 1")
    ids = [slurm.submit(script, job_name=unique_name()) for _ in range(6)]
    slurm.calls.clear()
    statuses = slurm.statuses(ids)
    assert sorted(statuses) == sorted(ids)
    assert slurm.calls == {"squeue": 1}
    slurm.calls.clear()
    statuses = slurm.statuses([*ids, "999999999"])  # a job squeue does not know: one sacct
    assert statuses["999999999"].state is JobState.UNKNOWN
    assert slurm.calls == {"squeue": 1, "sacct": 1}
    follower = JobFollower(slurm, poll_initial=0.2, poll_max=0.2, follow_logs=False)
    follower.add(*ids)
    slurm.calls.clear()
    started = time.monotonic()
    list(follower.events())
    assert all(s.state is JobState.COMPLETED for s in follower.statuses.values())
    # one squeue per 0.2 s cycle for all six jobs, never one per job
    assert slurm.calls["squeue"] <= (time.monotonic() - started) / 0.2 + 2
    assert set(slurm.calls) == {"squeue"}


def test_follower_survives_a_controller_restart(slurm_cluster, tmp_path):
    launcher = SlurmLauncher(retry_total_s=1.0, retry_initial_s=0.5, command_timeout_s=2.0)
    job_id = launcher.submit(
        job_script(tmp_path, "sleep 12; echo finished"), job_name=unique_name()
    )
    wait_for_state(launcher, job_id, "RUNNING")
    follower = JobFollower(launcher, poll_initial=0.5, poll_max=2.0)
    follower.add(job_id)
    restart = threading.Thread(target=slurm_cluster.restart_controller, kwargs={"down_s": 4})
    restart.start()
    try:
        events = list(follower.events())
    finally:
        restart.join(timeout=120)
    assert follower.statuses[job_id].state is JobState.COMPLETED
    assert any(e.kind == "controller" for e in events), "no status call hit the outage"
    assert [line for e in events if e.kind == "log" for line in e.lines] == ["finished"]


def test_accounting_fields(slurm, slurm_cluster, tmp_path):
    # tail holds the 300M line until its input ends, past two 5 s accounting samples
    script = job_script(tmp_path, "(head -c 300M /dev/zero; sleep 11) | tail", "--mem=1G")
    job_id = slurm.submit(script, job_name=unique_name("acct"))
    follow(slurm, job_id)
    deadline = time.monotonic() + 20
    accounting = slurm.accounting(job_id)
    while accounting.max_rss_bytes is None and time.monotonic() < deadline:  # sacct lags
        time.sleep(1)
        accounting = slurm.accounting(job_id)
    assert accounting.state is JobState.COMPLETED
    assert (accounting.exit_code, accounting.exit_status, accounting.exit_signal) == ("0:0", 0, 0)
    assert accounting.elapsed_s >= 6
    assert accounting.node == slurm_cluster.node
    assert accounting.max_rss_bytes is not None and accounting.max_rss_bytes > 100 * 2**20
    assert accounting.start_time and accounting.end_time
    assert accounting.name.endswith(":acct")


def test_timeout(slurm, timeout_job):
    """Last: the --time=1 job was submitted when the module started (takes ~70 s)."""
    status = follow(slurm, timeout_job, limit_s=150, poll=1.0)[0][timeout_job]
    assert status.state is JobState.TIMEOUT
    first, *rest = tail(status.log_path).splitlines()
    assert first == "started" and "DUE TO TIME LIMIT" in rest[-1]
    assert slurm.accounting(timeout_job).exit_signal == 15


def test_exit_marker_shows_the_end_long_before_the_next_status_call(slurm, tmp_path):
    """A job from a real JobScript leaves its exit marker; the follower, whose next status call
    is an hour away after the first, sees the end within seconds through it."""
    job = JobScript(
        job_name=unique_name("marker"),
        workdir=tmp_path,
        log_path=tmp_path / "logs" / "slurm-%j.out",
        resources=Resources(mem="100M", cpus=1, gpus=0, time="0:05:00"),
        command=["sleep", "4"],
    )
    (tmp_path / "logs").mkdir()
    script = tmp_path / "job.slurm"
    script.write_text(job.render())
    job_id = slurm.submit(script, job_name=job.job_name)
    follower = JobFollower(
        slurm, poll_initial=0.5, poll_max=3600.0, backoff=7200.0, follow_logs=False
    )
    follower.add(job_id)
    timer = threading.Timer(120, follower.stop)
    timer.start()
    started = time.monotonic()
    try:
        list(follower.events())
    finally:
        timer.cancel()
    assert follower.statuses[job_id].state is JobState.COMPLETED
    assert time.monotonic() - started < 90  # an hour without the marker
    assert exit_marker(tmp_path / "logs" / "slurm-1.out", job_id).read_text().strip() == "0"
