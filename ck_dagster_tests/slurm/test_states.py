"""States, SLURM's text formats, #SBATCH headers, log tails and the launcher choice."""

from __future__ import annotations

import pytest

from ck_dagster.errors import CkError
from ck_dagster.fileio import tail
from ck_dagster.slurm.batch_header import BatchHeader, expand_log_pattern
from ck_dagster.slurm.choose import choose_launcher
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.local import LocalLauncher
from ck_dagster.slurm.states import (
    JobState,
    exit_code_from_wait_status,
    parse_duration,
    split_exit_code,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("CANCELLED by 0", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("oom", JobState.OUT_OF_MEMORY),
        ("CD", JobState.COMPLETED),
        ("pending", JobState.PENDING),
        ("R", JobState.RUNNING),
        ("SOMETHING_NEW", JobState.UNKNOWN),
        ("", JobState.UNKNOWN),
    ],
)
def test_parse_state(text, state):
    assert JobState.parse(text) is state


def test_final_success_and_descriptions():
    assert {s for s in JobState if s.is_final} == {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
        JobState.REVOKED,
    }
    assert [s for s in JobState if s.is_success] == [JobState.COMPLETED]
    assert "more memory than --mem allowed" in JobState.OUT_OF_MEMORY.describe()
    assert "--time" in JobState.TIMEOUT.describe()
    assert all(s.describe().endswith(".") for s in JobState)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:15", 15),
        ("1:02:03", 3723),
        ("1-02:03:04", 93784),
        ("30", 1800),
        ("2-0", 172800),
        ("1-2:30", 95400),
        ("UNLIMITED", None),
        ("", None),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_exit_codes():
    assert exit_code_from_wait_status(256) == "1:0"
    assert exit_code_from_wait_status(15) == "0:15"
    assert exit_code_from_wait_status(0) == "0:0"
    assert split_exit_code("0:125") == (0, 125) and split_exit_code("junk") == (0, 0)


def test_expand_log_pattern():
    kwargs = {"job_name": "ck:e/r:train", "user": "ann", "node": "n1"}
    assert (
        expand_log_pattern("a/%x-%j.%u.%N.%%j.%a", job_id="7", **kwargs)
        == "a/ck:e/r:train-7.ann.n1.%j.%a"
    )
    assert (
        expand_log_pattern("logs-%u/slurm-%j.out", job_id=None, **kwargs) == "logs-ann/slurm-%j.out"
    )


def test_batch_header(tmp_path):
    script = tmp_path / "run.slurm"
    script.write_text(
        "#!/bin/bash\n# a comment\n#SBATCH --job-name=x --time=1:00:00\n"
        "#SBATCH -o 'logs dir/%j.out'  # trailing comment\n#SBATCH -D sub\n"
        "#SBATCH --open-mode append\n\necho hi\n#SBATCH --error=ignored\n"
    )
    header = BatchHeader.read(script)
    assert (header.job_name, header.time_limit_s, header.append) == ("x", 3600, True)
    assert header.workdir == tmp_path / "sub" and header.error is None
    assert (
        header.log_file(header.output, job_id="5", job_name="x", user="u")
        == tmp_path / "sub" / "logs dir" / "5.out"
    )
    header.make_log_dirs(job_name="x", user="u")
    assert (tmp_path / "sub" / "logs dir").is_dir()
    script.write_text("#!/bin/bash\n#SBATCH --time=soon\n")
    with pytest.raises(CkError, match="--time='soon'"):
        BatchHeader.read(script)


def test_tail(tmp_path):
    log = tmp_path / "log"
    log.write_text("".join(f"line {i}\n" for i in range(100000)))
    assert tail(log, 3) == "line 99997\nline 99998\nline 99999"
    assert tail(tmp_path / "missing") == "" and tail(None) == ""


def test_choose_launcher(tmp_path):
    messages: list[str] = []
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    assert isinstance(choose_launcher({"PATH": str(bin_dir)}, messages.append), SlurmLauncher)
    assert messages[-1] == f"launcher: slurm (sbatch found at {sbatch})"
    chosen = choose_launcher(
        {"PATH": str(tmp_path), "CK_LOCAL_JOBS_DIR": str(tmp_path / "s")}, messages.append
    )
    assert isinstance(chosen, LocalLauncher) and chosen.state_dir == tmp_path / "s"
    assert messages[-1] == "launcher: local (no sbatch on PATH)"
    assert isinstance(
        choose_launcher({"CK_LAUNCHER": "local", "PATH": str(bin_dir)}, messages.append),
        LocalLauncher,
    )
    assert messages[-1] == "launcher: local (CK_LAUNCHER=local)"
    assert isinstance(
        choose_launcher({"CK_LAUNCHER": "SLURM", "PATH": ""}, messages.append), SlurmLauncher
    )
    with pytest.raises(CkError, match=r"CK_LAUNCHER='pbs'.*'slurm' or 'local'"):
        choose_launcher({"CK_LAUNCHER": "pbs"}, messages.append)
