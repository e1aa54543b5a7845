"""The same job script on both back-ends: same log file, arguments, environment and state."""

from __future__ import annotations

import pytest

from ck_dagster.fileio import tail
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.launcher import Launcher
from ck_dagster.slurm.local import LocalLauncher
from ck_dagster.slurm.states import JobState
from ck_dagster_tests.slurm.jobs import follow, job_script, unique_name


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def launcher(request, tmp_path) -> Launcher:
    if request.param == "slurm":
        request.getfixturevalue("slurm_cluster")
        return SlurmLauncher(retry_total_s=20.0)
    return LocalLauncher(tmp_path / "state")


def test_completed_job_runs_and_logs_as_its_sbatch_lines_say(launcher, tmp_path):
    (tmp_path / "work").mkdir()
    script = job_script(
        tmp_path,
        'echo "$SLURM_JOB_ID $SLURM_JOB_NAME $1|$2 $CK_TEST_VAR"; pwd',
        "--chdir=work",
        "--error=errors-%j.txt",
    )
    name = unique_name()
    job_id = launcher.submit(
        script, job_name=name, args=["two words", "x;y"], env={"CK_TEST_VAR": "from env"}
    )
    final, events = follow(launcher, job_id)
    status = final[job_id]
    assert status.state is JobState.COMPLETED and status.exit_code == "0:0"
    assert status.name == name
    # relative to --chdir, as SLURM does; %x holds the '/' of the name, so a sub-folder
    assert status.log_path == tmp_path / "work" / "logs" / f"{name}-{job_id}.out"
    assert launcher.log_path(job_id) == status.log_path
    expected = [f"{job_id} {name} two words|x;y from env", str(tmp_path / "work")]
    assert tail(status.log_path).splitlines() == expected
    assert [line for e in events if e.kind == "log" for line in e.lines] == expected
    assert (tmp_path / "work" / f"errors-{job_id}.txt").exists()
    accounting = launcher.accounting(job_id)
    assert (accounting.state, accounting.exit_status, accounting.name) == (
        JobState.COMPLETED,
        0,
        name,
    )
