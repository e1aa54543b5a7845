"""What a batch script's ``#SBATCH`` block says (working directory, logs, time limit), and
SLURM's log-file patterns: read by both launchers, before submitting and to find a job's log.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ck_dagster.errors import CkError
from ck_dagster.slurm.states import parse_duration


def expand_log_pattern(
    pattern: str, *, job_id: str | None, job_name: str, user: str, node: str = ""
) -> str:
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
                options.update(_parse_directive(stripped[len("#SBATCH") :], script))
            elif stripped and not stripped.startswith("#"):
                break
        folder = Path(script).resolve().parent
        workdir = folder / options["chdir"] if "chdir" in options else folder
        try:
            time_limit = parse_duration(options.get("time", ""))
        except ValueError as exc:
            raise CkError(
                f"{script}: #SBATCH --time={options['time']!r} is not a SLURM time "
                "(use minutes, H:MM:SS or D-HH:MM:SS)"
            ) from exc
        return cls(
            script=Path(script),
            job_name=options.get("job-name"),
            workdir=workdir,
            output=options.get("output", "slurm-%j.out"),
            error=options.get("error"),
            time_limit_s=time_limit,
            append=options.get("open-mode") == "append",
        )

    def log_file(
        self, pattern: str, *, job_id: str, job_name: str, user: str, node: str = ""
    ) -> Path:
        """The file a log pattern names for one job, resolved against the working directory."""
        name = expand_log_pattern(pattern, job_id=job_id, job_name=job_name, user=user, node=node)
        return self.workdir / name

    def make_log_dirs(self, *, job_name: str, user: str) -> None:
        """Create the folders the logs go to: SLURM fails a job with no log at all (0:53)
        when its ``--output`` folder is missing."""
        for pattern in filter(None, (self.output, self.error)):
            folder = (
                self.workdir
                / expand_log_pattern(pattern, job_id=None, job_name=job_name, user=user)
            ).parent
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
