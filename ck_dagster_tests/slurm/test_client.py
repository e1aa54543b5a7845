"""SlurmLauncher against a fake SLURM: parsing of sbatch/squeue/sacct output, retries while the
controller does not answer, and adoption of a job a timed-out sbatch queued after all.

The fake answers each command as a scripted SLURM 22.05 would (the outputs below are in the
formats ``client.py`` asks for); the same paths run against the real cluster in
``test_slurm_cluster.py``. A fake clock makes the retry schedule exact.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ck_dagster.errors import CkError
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.launcher import ControllerUnavailable, SubmissionRefused
from ck_dagster.slurm.states import JobState

pytestmark = pytest.mark.unit

#: an answer: (returncode, stdout, stderr), or an exception to raise.
Answer = tuple[int, str, str] | BaseException
DOWN = (1, "", "squeue: error: Unable to contact slurm controller (connect failure)\n")


@dataclass
class FakeSlurm:
    """``subprocess.run`` for SLURM's clients: each command answers from its own queue (the
    last answer repeats), and every call is recorded."""

    answers: dict[str, list[Answer | Callable[[list[str]], Answer]]] = field(default_factory=dict)
    argvs: list[list[str]] = field(default_factory=list)

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.argvs.append(list(argv))
        queue = self.answers.get(argv[0])
        if not queue:
            raise AssertionError(f"unexpected command {argv}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if callable(answer):
            answer = answer(argv)
        if isinstance(answer, BaseException):
            raise answer
        code, out, err = answer
        return subprocess.CompletedProcess(argv, code, out, err)

    def ran(self, command: str) -> list[list[str]]:
        """The argument lists of every call of ``command``."""
        return [argv for argv in self.argvs if argv[0] == command]


class FakeClock:
    """time.monotonic and time.sleep over one number."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def launcher(fake: FakeSlurm, clock: FakeClock | None = None, **kwargs: Any) -> SlurmLauncher:
    clock = clock or FakeClock()
    return SlurmLauncher(run=fake, sleep=clock.sleep, clock=clock, **kwargs)


def squeue_row(
    job_id: str,
    state: str,
    name: str,
    *,
    exit_raw: int = 0,
    used: str = "0:00",
    node: str = "(null)",
    stdout: str = "/runs/r/slurm-%j.out",
    reason: str = "None",
) -> str:
    """One row in client.py's ``--Format`` (fields joined by ``|``, the name last)."""
    return "|".join([job_id, state, reason, str(exit_raw), used, node, "me", stdout, name])


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "finetune.slurm"
    path.parent.mkdir()
    path.write_text(
        "#!/bin/bash\n#SBATCH --output=logs/%x/slurm-%j.out\n#SBATCH --time=1:00:00\necho hi\n"
    )
    return path


def test_submit_passes_the_name_and_args_and_reads_the_parsable_id(script: Path) -> None:
    fake = FakeSlurm({"sbatch": [(0, "4242;cluster\n", "")]})
    job_id = launcher(fake).submit(script, job_name="ck:exp/run:train", args=["batch_size=2"])
    assert job_id == "4242"
    (argv,) = fake.ran("sbatch")
    assert argv == [
        "sbatch",
        "--parsable",
        "--job-name=ck:exp/run:train",
        str(script.resolve()),
        "batch_size=2",
    ]
    assert (script.parent / "logs" / "ck:exp" / "run:train").is_dir(), "log folder made first"


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        (
            (
                1,
                "",
                "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
            ),
            SubmissionRefused,
            "Invalid partition name specified. Fix the #SBATCH request",
        ),
        ((0, "Submitted batch job\n", ""), CkError, "printed no job id"),
        (FileNotFoundError("sbatch"), CkError, "set CK_LAUNCHER=local"),
    ],
)
def test_submit_failures_say_what_slurm_said(
    script: Path, answer: Answer, error: type[Exception], words: str
) -> None:
    fake = FakeSlurm({"sbatch": [answer]})
    with pytest.raises(error, match=words.replace(".", r"\.")):
        launcher(fake).submit(script, job_name="j")
    assert len(fake.ran("sbatch")) == 1, "a refusal is not retried"


def test_a_silent_controller_is_retried_with_backoff_then_answers(script: Path) -> None:
    clock = FakeClock()
    fake = FakeSlurm({"sbatch": [DOWN, DOWN, DOWN, (0, "7\n", "")]})
    told: list[str] = []
    slurm = launcher(fake, clock, retry_initial_s=1, retry_max_s=3, log=told.append)
    assert slurm.submit(script, job_name="j") == "7"
    assert clock.sleeps == [1, 2, 3]
    assert len(told) == 3 and told[0].startswith("sbatch: controller not answering (")
    assert told[0].endswith("); retrying in 1.0s")
    assert slurm.calls["sbatch"] == 4
    assert not fake.ran("squeue"), "a refused connection cannot have queued a job: no lookup"


def test_the_retries_end_after_their_total_time() -> None:
    clock = FakeClock()
    fake = FakeSlurm({"squeue": [DOWN]})
    slurm = launcher(fake, clock, retry_total_s=10, retry_initial_s=1, retry_max_s=4)
    with pytest.raises(ControllerUnavailable, match="did not answer `squeue` for 10s"):
        slurm.statuses(["1"])
    assert clock.sleeps == [1, 2, 4, 3] and clock.now == 10


def test_a_timed_out_sbatch_whose_job_was_queued_is_adopted(script: Path) -> None:
    """The controller took the job but the answer was lost: the job found by name is used,
    not a second one submitted."""
    fake = FakeSlurm(
        {
            "sbatch": [subprocess.TimeoutExpired("sbatch", 120)],
            "squeue": [
                (
                    0,
                    squeue_row("88", "RUNNING", "other")
                    + "\n"
                    + squeue_row("90", "PENDING", "ck:e/r:train")
                    + "\n",
                    "",
                )
            ],
            "sacct": [(0, "", "")],
        }
    )
    told: list[str] = []
    assert launcher(fake, log=told.append).submit(script, job_name="ck:e/r:train") == "90"
    assert len(fake.ran("sbatch")) == 1
    assert told[-1] == "sbatch timed out but job 90 (ck:e/r:train) is queued: using it"
    assert "--user" in fake.ran("squeue")[0]


def test_a_timed_out_sbatch_with_nothing_queued_is_submitted_again(script: Path) -> None:
    fake = FakeSlurm(
        {
            "sbatch": [subprocess.TimeoutExpired("sbatch", 120), (0, "91\n", "")],
            "squeue": [(0, "", "")],
            "sacct": [(0, "", "")],
        }
    )
    assert launcher(fake).submit(script, job_name="ck:e/r:train") == "91"
    assert len(fake.ran("sbatch")) == 2


def test_statuses_one_squeue_then_sacct_for_the_forgotten() -> None:
    # wait status 256 is exit code 1; 9 is killed by signal 9.
    rows = "\n".join(
        [
            squeue_row("10", "RUNNING", "ck:e/a:train", used="1:02:03", node="vm"),
            squeue_row(
                "11",
                "FAILED",
                "a|name|with|bars",
                exit_raw=256,
                used="5",
                node="vm",
                stdout="/runs/%x/%j.out",
            ),
            squeue_row("12", "CANCELLED", "c", exit_raw=9, reason="(null)"),
        ]
    )
    fake = FakeSlurm(
        {
            "squeue": [(0, rows + "\n", "")],
            "sacct": [(0, "13|OUT_OF_MEMORY|None|0:125|61|vm|old\n", "")],
        }
    )
    found = launcher(fake).statuses(["10", "11", "12", "13", "14", "10"])
    assert list(found) == ["10", "11", "12", "13", "14"]
    assert len(fake.ran("squeue")) == 1 and "-j" in fake.ran("squeue")[0]
    assert fake.ran("sacct")[0][-2:] == ["-j", "13,14"]
    running, failed, cancelled, oom, unknown = found.values()
    assert (running.state, running.elapsed_s, running.node) == (JobState.RUNNING, 3723, "vm")
    assert running.log_path == Path("/runs/r/slurm-10.out")
    assert (failed.state, failed.exit_code, failed.name) == (
        JobState.FAILED,
        "1:0",
        "a|name|with|bars",
    )
    assert failed.log_path == Path("/runs/a|name|with|bars/11.out")
    assert (cancelled.exit_code, cancelled.reason, cancelled.node) == ("0:9", "", "")
    assert (oom.state, oom.exit_code, oom.elapsed_s, oom.log_path) == (
        JobState.OUT_OF_MEMORY,
        "0:125",
        61,
        None,
    )
    assert unknown.state is JobState.UNKNOWN and "neither squeue nor sacct" in unknown.reason


def test_a_job_squeue_calls_invalid_is_looked_up_in_accounting() -> None:
    fake = FakeSlurm(
        {
            "squeue": [(1, "", "slurm_load_jobs error: Invalid job id specified\n")],
            "sacct": [(0, "5|COMPLETED|None|0:0|12|vm|done\n", "")],
        }
    )
    assert launcher(fake).statuses(["5"])["5"].state is JobState.COMPLETED


@pytest.mark.parametrize(
    ("command", "stderr"),
    [
        ("squeue", "squeue: error: Invalid user: nobody\n"),
        ("sacct", "sacct: error: Problem talking to the database\n"),
    ],
)
def test_other_client_errors_are_not_hidden(command: str, stderr: str) -> None:
    fake = FakeSlurm({"squeue": [(0, "", "")], "sacct": [(0, "", "")]})
    fake.answers[command] = [(1, "", stderr)]
    with pytest.raises(CkError, match=f"{command} failed: " + stderr.split("error: ")[1].strip()):
        launcher(fake).statuses(["5"])


def test_an_unreadable_squeue_row_is_an_error_not_a_guess() -> None:
    fake = FakeSlurm({"squeue": [(0, "10|RUNNING|None\n", "")]})
    with pytest.raises(CkError, match="cannot read: '10|RUNNING|None'"):
        launcher(fake).statuses(["10"])


def test_find_puts_live_jobs_first_then_the_newest() -> None:
    fake = FakeSlurm(
        {
            "squeue": [
                (
                    0,
                    squeue_row("30", "COMPLETED", "j")
                    + "\n"
                    + squeue_row("31", "COMPLETED", "other")
                    + "\n",
                    "",
                )
            ],
            "sacct": [
                (
                    0,
                    "29|FAILED|None|1:0|3|vm|j\n32|TIMEOUT|None|0:0|9|vm|j\n"
                    "33|COMPLETED|None|0:0|9|vm|jj\n",
                    "",
                )
            ],
        }
    )
    found = launcher(fake).find("j")
    assert [s.job_id for s in found] == ["32", "30", "29"]
    assert "--name=j" in fake.ran("sacct")[0]


def test_find_does_not_ask_accounting_when_a_job_is_alive_and_filters_comma_names() -> None:
    fake = FakeSlurm({"squeue": [(0, squeue_row("40", "PENDING", "a,b") + "\n", "")]})
    assert [s.job_id for s in launcher(fake).find("a,b")] == ["40"]
    assert not fake.ran("sacct")
    fake = FakeSlurm(
        {
            "squeue": [(0, "", "")],
            "sacct": [(0, "41|FAILED|None|1:0|3|vm|a,b\n42|FAILED|None|1:0|3|vm|a\n", "")],
        }
    )
    assert [s.job_id for s in launcher(fake).find("a,b")] == ["41"]
    assert not any(arg.startswith("--name") for arg in fake.ran("sacct")[0]), (
        "sacct splits --name on commas"
    )


def test_accounting_takes_start_end_and_the_largest_step_memory() -> None:
    fake = FakeSlurm(
        {
            "squeue": [(0, squeue_row("50", "COMPLETED", "j", used="2:00", node="vm") + "\n", "")],
            "sacct": [
                (
                    0,
                    "50|2026-01-01T10:00:00|2026-01-01T10:02:00|\n"
                    "50.batch|2026-01-01T10:00:00|2026-01-01T10:02:00|1.50G\n"
                    "50.extern|2026-01-01T10:00:00|2026-01-01T10:02:00|3284K\n",
                    "",
                )
            ],
        }
    )
    account = launcher(fake).accounting("50")
    assert (account.state, account.elapsed_s, account.node) == (JobState.COMPLETED, 120, "vm")
    assert account.max_rss_bytes == int(1.5 * (1 << 30))
    assert (account.start_time, account.end_time) == ("2026-01-01T10:00:00", "2026-01-01T10:02:00")


def test_accounting_without_slurmdbd_has_no_memory_or_times() -> None:
    disabled = (1, "", "sacct: error: Slurm accounting storage is disabled\n")
    fake = FakeSlurm(
        {"squeue": [(0, squeue_row("60", "RUNNING", "j") + "\n", "")], "sacct": [disabled]}
    )
    account = launcher(fake).accounting("60")
    assert account.state is JobState.RUNNING
    assert (account.max_rss_bytes, account.start_time, account.end_time) == (None, None, None)


def test_cancelling_a_finished_job_is_quiet_other_refusals_are_not() -> None:
    fake = FakeSlurm(
        {
            "scancel": [
                (0, "", ""),
                (
                    1,
                    "",
                    "scancel: error: Kill job error on job id 7: Job/step already completing or "
                    "completed\n",
                ),
                (1, "", "scancel: error: Kill job error on job id 8: Access/permission denied\n"),
            ]
        }
    )
    slurm = launcher(fake)
    slurm.cancel("6")
    slurm.cancel("7")
    with pytest.raises(CkError, match="cannot cancel SLURM job 8: .*permission denied"):
        slurm.cancel("8")
    assert [argv for argv in fake.argvs] == [["scancel", "6"], ["scancel", "7"], ["scancel", "8"]]
