"""What a job is doing and how it ended, in SLURM's words and in a researcher's.

The same types describe jobs run by SLURM and by the local launcher, so the layers above never
care which back-end ran a job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class JobState(str, Enum):
    """A SLURM job state (``squeue -O State`` / ``sacct -o State``)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    RESIZING = "RESIZING"
    STOPPED = "STOPPED"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    REVOKED = "REVOKED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str) -> JobState:
        """Read a state as squeue, scontrol or sacct print it.

        ``CANCELLED by 0``, ``CANCELLED+`` (sacct without ``-P``), ``CA`` (compact codes) and
        lower case all parse; anything unrecognised is UNKNOWN rather than an error, so a newer
        SLURM with a new state never breaks a follower.
        """
        word = text.strip().split(" ", 1)[0].rstrip("+").upper()
        word = _COMPACT.get(word, word)
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @property
    def is_final(self) -> bool:
        """True when the job has ended for good.

        Held states (REQUEUE_HOLD, SPECIAL_EXIT) are not final: a release makes them run again.
        """
        return self in _FINAL

    @property
    def is_success(self) -> bool:
        """True only for COMPLETED (every step exited 0)."""
        return self is JobState.COMPLETED

    def describe(self) -> str:
        """One sentence for a researcher: what this state means for their job."""
        return _DESCRIPTIONS.get(self, f"SLURM reports the job as {self.value}.")


_FINAL = frozenset(
    {
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
)

# squeue's compact state codes (%t / StateCompact).
_COMPACT = {
    "PD": "PENDING",
    "CF": "CONFIGURING",
    "R": "RUNNING",
    "CG": "COMPLETING",
    "S": "SUSPENDED",
    "RQ": "REQUEUED",
    "RH": "REQUEUE_HOLD",
    "RF": "REQUEUE_FED",
    "RS": "RESIZING",
    "ST": "STOPPED",
    "SI": "SIGNALING",
    "SO": "STAGE_OUT",
    "RD": "RESV_DEL_HOLD",
    "SE": "SPECIAL_EXIT",
    "CD": "COMPLETED",
    "F": "FAILED",
    "CA": "CANCELLED",
    "TO": "TIMEOUT",
    "OOM": "OUT_OF_MEMORY",
    "NF": "NODE_FAIL",
    "PR": "PREEMPTED",
    "BF": "BOOT_FAIL",
    "DL": "DEADLINE",
    "RV": "REVOKED",
}

_DESCRIPTIONS = {
    JobState.PENDING: "The job is waiting in the queue for resources or its start time.",
    JobState.CONFIGURING: "The job has its nodes and is waiting for them to be ready.",
    JobState.RUNNING: "The job is running.",
    JobState.COMPLETING: "The job's processes are ending and SLURM is cleaning up.",
    JobState.SUSPENDED: "The job was paused by an administrator or a higher-priority job.",
    JobState.REQUEUED: "The job was put back in the queue and will run again from the start.",
    JobState.REQUEUE_HOLD: "The job was requeued and is held until someone releases it "
    "(scontrol release).",
    JobState.STOPPED: "The job's processes were stopped (SIGSTOP) but keep their resources.",
    JobState.SPECIAL_EXIT: "The job was requeued in a special exit state and is held; "
    "see its log, then release or cancel it.",
    JobState.COMPLETED: "The job finished and its script exited 0.",
    JobState.FAILED: "The job's script exited with a non-zero code; its log says why.",
    JobState.CANCELLED: "The job was cancelled (scancel, or by an administrator) before it "
    "finished.",
    JobState.TIMEOUT: "The job ran longer than its --time limit and was stopped; ask for more "
    "time or save checkpoints more often.",
    JobState.OUT_OF_MEMORY: "The job used more memory than --mem allowed and was killed; ask "
    "for more memory or use a smaller batch size.",
    JobState.NODE_FAIL: "The node running the job failed; this is not the job's fault, "
    "submit it again.",
    JobState.PREEMPTED: "The job was stopped to make room for a higher-priority job.",
    JobState.BOOT_FAIL: "The node for the job failed to boot; submit it again.",
    JobState.DEADLINE: "The job could not finish before its --deadline and was removed.",
    JobState.REVOKED: "The job was removed because a sibling cluster ran it (federation).",
    JobState.UNKNOWN: "SLURM reports no state for this job (it may have been purged).",
}


@dataclass(frozen=True)
class JobStatus:
    """One job's state as the control plane sees it now (one row of one status call)."""

    job_id: str
    name: str
    state: JobState
    reason: str = ""
    #: ``"N:S"`` as SLURM prints it: the script's exit status and the signal that ended it.
    exit_code: str = "0:0"
    elapsed_s: int = 0
    node: str = ""
    log_path: Path | None = None


@dataclass(frozen=True)
class JobAccounting:
    """How a job ended: what ``sacct`` records (or the local launcher's own record)."""

    job_id: str
    name: str
    state: JobState
    exit_code: str
    #: the script's exit status (N of ``N:S``).
    exit_status: int
    #: the signal that ended it (S of ``N:S``); 0 when it exited on its own.
    exit_signal: int
    elapsed_s: int
    node: str
    #: peak resident memory of the job's largest step; None without accounting.
    max_rss_bytes: int | None
    reason: str
    #: ISO 8601 local time as SLURM prints it; None when the job never started or ended.
    start_time: str | None
    end_time: str | None


def split_exit_code(exit_code: str) -> tuple[int, int]:
    """``"1:0"`` -> ``(1, 0)``; a bare ``"3"`` -> ``(3, 0)``; unreadable -> ``(0, 0)``."""
    status, _, signal = exit_code.partition(":")
    try:
        return int(status or 0), int(signal or 0)
    except ValueError:
        return 0, 0


def exit_code_from_wait_status(raw: int) -> str:
    """A waitpid() status (what ``squeue -O exit_code`` prints) as SLURM's ``"N:S"``."""
    signal = raw & 0x7F
    if signal:
        return f"0:{signal}"
    return f"{(raw >> 8) & 0xFF}:0"


_DURATION = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def parse_duration(text: str) -> int | None:
    """Seconds in a SLURM duration (``--time`` values, squeue's TimeUsed, sacct's Elapsed).

    ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; None for ``UNLIMITED`` /
    ``INFINITE`` / ``NOT_SET`` / empty. Raises ValueError for anything else.
    """
    text = text.strip()
    if text.upper() in ("", "UNLIMITED", "INFINITE", "NOT_SET", "N/A"):
        return None
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a SLURM duration: {text!r}")
    days = int(match["days"] or 0)
    parts = [int(p) for p in (match["a"], match["b"], match["c"]) if p is not None]
    if match["days"] is not None:  # D-H[:M[:S]]
        parts += [0] * (3 - len(parts))
        hours, minutes, seconds = parts
    elif len(parts) == 1:  # M
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:  # M:S
        hours, (minutes, seconds) = 0, parts
    else:  # H:M:S
        hours, minutes, seconds = parts
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def format_duration(seconds: int) -> str:
    """``seconds`` as a SLURM ``--time`` value: ``H:MM:SS``, or ``D-HH:MM:SS`` from a day."""
    days, rest = divmod(max(0, seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}" if days else f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock
