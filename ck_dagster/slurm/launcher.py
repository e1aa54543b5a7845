"""Where job scripts run: the ``Launcher`` interface shared by SLURM and the local back-end.

A launcher submits a batch script, reports the state of many jobs in one control-plane call,
finds a job again by name (after the submitting process died), cancels it and reads its final
accounting. ``choose_launcher`` picks the back-end for this machine.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ck_dagster.errors import CkError
from ck_dagster.slurm.states import JobAccounting, JobStatus, parse_duration

_log = logging.getLogger(__name__)


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

    def submit(self, script: Path, *, job_name: str, args: Sequence[str] = (),
               env: Mapping[str, str] | None = None) -> str:
        """Submit ``script`` (run from its folder) with ``args``; return the job id."""
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


def tail(path: str | os.PathLike[str] | None, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ("" when it does not exist yet).

    Reads backwards in blocks, so a multi-gigabyte training log costs the same as a small one.
    """
    if path is None or lines <= 0:
        return ""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the `with` below)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return ""
    with handle:
        end = handle.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= lines:
            step = min(65536, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def order_found(found: Iterable[JobStatus]) -> list[JobStatus]:
    """Order ``find`` results: jobs still alive first, then newest (highest id) first."""
    def key(status: JobStatus) -> tuple[bool, int, str]:
        number = int(status.job_id) if status.job_id.isdigit() else -1
        return status.state.is_final, -number, status.job_id
    return sorted(found, key=key)


def expand_log_pattern(pattern: str, *, job_id: str | None, job_name: str, user: str,
                       node: str = "") -> str:
    """Fill in SLURM's filename patterns (``%j %J %A %x %u %N %%``), as sbatch does for logs.

    With ``job_id=None`` the job-id patterns stay as they are (used before submission to find
    the log directory). Patterns SLURM has but a batch log never needs (%a, %s, %t) stay as
    written.
    """
    fields = {"x": job_name, "u": user, "N": node}
    if job_id is not None:
        fields.update(j=job_id, J=job_id, A=job_id)
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "%" and i + 1 < len(pattern):
            code = pattern[i + 1]
            if code == "%":
                out.append("%")
                i += 2
                continue
            if code in fields:
                out.append(fields[code])
                i += 2
                continue
        out.append(char)
        i += 1
    return "".join(out)


# #SBATCH options this package reads, by long name; the short forms map onto them.
_VALUE_OPTIONS = {"output", "error", "chdir", "job-name", "time", "open-mode"}
_SHORT_OPTIONS = {"-o": "output", "-e": "error", "-D": "chdir", "-J": "job-name", "-t": "time"}


@dataclass(frozen=True)
class BatchHeader:
    """What a batch script's ``#SBATCH`` lines say about where it runs, logs and for how long."""

    script: Path
    job_name: str | None
    #: the job's working directory (``--chdir``, else the script's folder, where we submit from).
    workdir: Path
    #: ``--output`` pattern (SLURM's default ``slurm-%j.out``), relative to ``workdir``.
    output: str
    #: ``--error`` pattern; None means "into the output file".
    error: str | None
    time_limit_s: int | None
    append: bool

    @classmethod
    def read(cls, script: Path) -> BatchHeader:
        """Parse the ``#SBATCH`` block at the top of ``script`` (as sbatch does: it ends at the
        first line that is neither blank nor a comment)."""
        options: dict[str, str] = {}
        for line in Path(script).read_text(errors="replace").splitlines():
            stripped = line.strip()
            if stripped.startswith("#SBATCH"):
                options.update(_parse_directive(stripped[len("#SBATCH"):], script))
            elif stripped and not stripped.startswith("#"):
                break
        folder = Path(script).resolve().parent
        workdir = folder / options["chdir"] if "chdir" in options else folder
        try:
            time_limit = parse_duration(options.get("time", ""))
        except ValueError as exc:
            raise CkError(f"{script}: #SBATCH --time={options['time']!r} is not a SLURM time "
                          "(use minutes, H:MM:SS or D-HH:MM:SS)") from exc
        return cls(script=Path(script), job_name=options.get("job-name"), workdir=workdir,
                   output=options.get("output", "slurm-%j.out"), error=options.get("error"),
                   time_limit_s=time_limit, append=options.get("open-mode") == "append")

    def log_file(self, pattern: str, *, job_id: str, job_name: str, user: str,
                 node: str = "") -> Path:
        """The file a log pattern names for one job, resolved against the working directory."""
        name = expand_log_pattern(pattern, job_id=job_id, job_name=job_name, user=user,
                                  node=node)
        return self.workdir / name

    def make_log_dirs(self, *, job_name: str, user: str) -> None:
        """Create the folders the logs go to: SLURM fails a job with no log at all (0:53)
        when its ``--output`` folder is missing."""
        for pattern in filter(None, (self.output, self.error)):
            folder = (self.workdir / expand_log_pattern(
                pattern, job_id=None, job_name=job_name, user=user)).parent
            if "%" not in str(folder):
                folder.mkdir(parents=True, exist_ok=True)


def _parse_directive(text: str, script: Path) -> dict[str, str]:
    """The options this package reads from one ``#SBATCH`` line's text."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError as exc:
        raise CkError(f"{script}: cannot read '#SBATCH{text}': {exc}") from exc
    found: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token, i = tokens[i], i + 1
        if token.startswith("--"):
            name, has_value, value = token[2:].partition("=")
        elif token[:2] in _SHORT_OPTIONS:
            name, value = _SHORT_OPTIONS[token[:2]], token[2:].lstrip("=")
            has_value = "=" if value else ""
        else:
            continue
        if name not in _VALUE_OPTIONS:
            continue
        if not has_value and i < len(tokens):
            value, i = tokens[i], i + 1
        found[name] = value
    return found


def choose_launcher(env: Mapping[str, str] = os.environ,
                    log: Callable[[str], None] = _log.info) -> Launcher:
    """The launcher for this machine: ``CK_LAUNCHER=slurm|local``, else SLURM when ``sbatch``
    is on PATH, else local. Says which one and why through ``log``."""
    # Imported here: both back-ends import this module for the interface and its helpers.
    from ck_dagster.slurm.client import SlurmLauncher
    from ck_dagster.slurm.local import LocalLauncher

    choice = env.get("CK_LAUNCHER", "").strip().lower()
    if choice not in ("", "slurm", "local"):
        raise CkError(f"CK_LAUNCHER={env['CK_LAUNCHER']!r} is not a launcher: set it to 'slurm' "
                      "or 'local', or unset it to use SLURM when sbatch is on PATH")
    if choice:
        why = f"CK_LAUNCHER={choice}"
    else:
        sbatch = shutil.which("sbatch", path=env.get("PATH"))
        choice = "slurm" if sbatch else "local"
        why = f"sbatch found at {sbatch}" if sbatch else "no sbatch on PATH"
    launcher: Launcher
    if choice == "slurm":
        launcher = SlurmLauncher()
    else:
        launcher = LocalLauncher(state_dir=env.get("CK_LOCAL_JOBS_DIR") or None)
    log(f"launcher: {choice} ({why})")
    return launcher
