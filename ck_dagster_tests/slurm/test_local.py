"""LocalLauncher: the same job scripts as local detached processes (no SLURM needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ck_dagster.errors import CkError
from ck_dagster.fileio import tail
from ck_dagster.slurm.local import LocalLauncher
from ck_dagster.slurm.states import JobState
from ck_dagster_tests.slurm.jobs import follow, job_script, unique_name, wait_for_state


@pytest.fixture
def local(tmp_path) -> LocalLauncher:
    return LocalLauncher(tmp_path / "state")


def test_failed_job_and_ids_count_up(local, tmp_path):
    script = job_script(tmp_path, "echo 'loss went to nan'; exit 3")
    first = local.submit(script, job_name=unique_name())
    second = local.submit(script, job_name=unique_name())
    assert int(second) == int(first) + 1
    local.calls.clear()
    final, _ = follow(local, first, second)
    assert local.calls["scan"] >= 1 and set(local.calls) == {"scan"}
    for job_id in (first, second):
        assert final[job_id].state is JobState.FAILED
        assert final[job_id].exit_code == "3:0" and final[job_id].reason == "NonZeroExitCode"
        assert tail(final[job_id].log_path) == "loss went to nan"


def test_cancel_stops_the_whole_process_group(local, tmp_path):
    script = job_script(tmp_path, "sleep 300 & echo $! > child.pid; wait")
    job_id = local.submit(script, job_name=unique_name())
    wait_for_state(local, job_id, "RUNNING")
    local.cancel(job_id)
    status = follow(local, job_id, limit_s=15)[0][job_id]
    assert status.state is JobState.CANCELLED
    assert not _running(int((tmp_path / "child.pid").read_text()))
    local.cancel(job_id)  # already ended: nothing to do


def test_time_limit(local, tmp_path):
    script = job_script(tmp_path, "echo started; sleep 300", "--time=0:02")
    job_id = local.submit(script, job_name=unique_name())
    status = follow(local, job_id, limit_s=15)[0][job_id]
    assert status.state is JobState.TIMEOUT and status.exit_code == "0:15"


def test_a_time_limit_given_at_submission_replaces_the_scripts(local, tmp_path):
    """What a resumed job asks for after a TIMEOUT (``--time`` on sbatch's command line)."""
    script = job_script(tmp_path, "echo started; sleep 300", "--time=10:00")
    job_id = local.submit(script, job_name=unique_name(), time_limit="0:02")
    status = follow(local, job_id, limit_s=15)[0][job_id]
    assert status.state is JobState.TIMEOUT


def test_adopt_by_name_after_the_submitter_was_killed(local, tmp_path):
    script = job_script(tmp_path, "sleep 2; echo done")
    name = unique_name()
    submitter = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from ck_dagster.slurm.local import LocalLauncher
        launcher = LocalLauncher({str(local.state_dir)!r})
        print(launcher.submit(Path({str(script)!r}), job_name={name!r}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", submitter], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    found = local.find(name)
    assert [s.job_id for s in found] == [result.stdout.strip()]
    assert found[0].state is JobState.RUNNING
    status = follow(local, found[0].job_id)[0][found[0].job_id]
    assert status.state is JobState.COMPLETED and tail(status.log_path) == "done"


def test_a_killed_wrapper_is_a_failed_job(local, tmp_path):
    job_id = local.submit(job_script(tmp_path, "echo up; sleep 300"), job_name=unique_name())
    job_dir = local.state_dir / job_id
    for _ in range(100):  # until the script runs and the wrapper has recorded its group
        if tail(local.log_path(job_id)) == "up" and (job_dir / "job.pgid").exists():
            break
        time.sleep(0.05)
    os.kill(int((job_dir / "wrapper.pid").read_text()), signal.SIGKILL)
    status = follow(local, job_id, limit_s=10)[0][job_id]
    assert status.state is JobState.FAILED
    assert "without recording an exit code" in status.reason
    group = int((job_dir / "job.pgid").read_text())
    os.killpg(group, 0)  # the script outlived its wrapper...
    local.cancel(job_id)  # ...until cancel kills its process group
    time.sleep(0.2)
    assert not _running(group)
    assert local.statuses([job_id])[job_id].state is JobState.FAILED


def test_state_dir_from_environment_and_unknown_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("CK_LOCAL_JOBS_DIR", str(tmp_path / "elsewhere"))
    launcher = LocalLauncher()
    assert launcher.state_dir == tmp_path / "elsewhere"
    assert launcher.statuses(["42"])["42"].state is JobState.UNKNOWN
    with pytest.raises(CkError, match="no local job '42'"):
        launcher.cancel("42")
    with pytest.raises(CkError, match="no such file"):
        launcher.submit(tmp_path / "missing.sh", job_name="x")


def _running(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie nobody reaped)?"""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
