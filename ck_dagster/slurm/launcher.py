"""Where job scripts run: the ``Launcher`` interface shared by SLURM and the local back-end.

A launcher submits a batch script, reports the state of many jobs in one control-plane call,
finds a job again by name (after the submitting process died), cancels it and reads its final
accounting. ``choose.choose_launcher`` picks the back-end for this machine. The interface, its
errors and ``states`` are the bottom layer: the back-ends import them, never the other way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from ck_dagster.errors import CkError
from ck_dagster.slurm.states import JobAccounting, JobStatus


class SubmissionRefused(CkError):
    """The scheduler refused a job (unknown partition, impossible request, bad constraint)."""


class ControllerUnavailable(CkError):
    """The scheduler did not answer, even after retrying for a while."""


@runtime_checkable
class Launcher(Protocol):
    """Runs batch scripts and follows them; implemented by SlurmLauncher and LocalLauncher."""

    #: "slurm" or "local": recorded with every job id, which is only unique per back-end.
    name: str
    #: control-plane calls made so far, by command (squeue, sacct, sbatch, ...; "scan" for local).
    calls: Counter[str]

    def submit(
        self,
        script: Path,
        *,
        job_name: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        time_limit: str | None = None,
    ) -> str:
        """Submit ``script`` (run from its folder) with ``args``, and ``time_limit`` (a
        ``--time`` value) instead of the script's when given; return the job id."""
        ...

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The states of many jobs in one control-plane call, keyed by job id."""
        ...

    def find(self, job_name: str) -> list[JobStatus]:
        """Jobs named exactly ``job_name``: pending/running first, then newest first."""
        ...

    def accounting(self, job_id: str) -> JobAccounting:
        """How a job ended (or is doing so far): state, exit code, elapsed, node, memory."""
        ...

    def cancel(self, job_id: str) -> None:
        """Cancel a job; cancelling a job that already ended does nothing."""
        ...

    def log_path(self, job_id: str) -> Path | None:
        """Where the job writes its standard output, or None when it is not known."""
        ...


def order_found(found: Iterable[JobStatus]) -> list[JobStatus]:
    """Order ``find`` results: jobs still alive first, then newest (highest id) first."""

    def key(status: JobStatus) -> tuple[bool, int, str]:
        number = int(status.job_id) if status.job_id.isdigit() else -1
        return status.state.is_final, -number, status.job_id

    return sorted(found, key=key)
