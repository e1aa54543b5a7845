"""The SLURM back-end: sbatch / squeue / sacct / scancel on the machine Dagster runs on.

Every command is an argument list (no shell). A controller that does not answer is retried
with exponential backoff for a bounded time, then reported as ``ControllerUnavailable``; a
refusal is ``SubmissionRefused`` with SLURM's own message.
"""

from __future__ import annotations

import getpass
import logging
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ck_dagster.errors import CkError
from ck_dagster.settings import child_environment
from ck_dagster.slurm.batch_header import BatchHeader, expand_log_pattern
from ck_dagster.slurm.launcher import ControllerUnavailable, SubmissionRefused, order_found
from ck_dagster.slurm.states import (
    JobAccounting,
    JobState,
    JobStatus,
    exit_code_from_wait_status,
    parse_duration,
    split_exit_code,
)

_log = logging.getLogger(__name__)

#: how a command runs: ``subprocess.run``'s signature (tests inject a fake SLURM here).
CommandRunner = Callable[..., "subprocess.CompletedProcess[str]"]

# What SLURM's clients print when the controller (or the network to it) does not answer.
_CONTROLLER_DOWN = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "connection timed out",
    "zero bytes were transmitted or received",
    "communication connection failure",
    "slurmctld is not responding",
)
# Of those, the ones after which a submission may have gone through all the same.
_MAYBE_SUBMITTED = ("socket timed out", "zero bytes were transmitted or received")

# One squeue row per job; the name goes last because only it may contain the separator.
_SQUEUE_FORMAT = (
    "JobID:|,State:|,Reason:|,exit_code:|,TimeUsed:|,NodeList:|,UserName:|,STDOUT:|,Name:"
)
_SQUEUE_FIELDS = 9
_SACCT_STATUS_FIELDS = "JobIDRaw,State,Reason,ExitCode,ElapsedRaw,NodeList,JobName"
_SACCT_ACCOUNTING_FIELDS = "JobIDRaw,Start,End,MaxRSS"


class SlurmLauncher:
    """Submits and follows batch jobs through the SLURM command-line clients.

    ``calls`` counts every command run, by name, so a caller can tell how hard it leans on the
    controller (the follower makes one ``squeue`` per cycle whatever the number of jobs).
    """

    name = "slurm"

    def __init__(
        self,
        *,
        retry_total_s: float = 300.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        command_timeout_s: float = 120.0,
        find_window_days: int = 30,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        run: CommandRunner = subprocess.run,
        log: Callable[[str], object] | None = None,
    ) -> None:
        """``retry_*`` bound how long an unanswering controller is retried (total, first and
        longest pause); ``find_window_days`` is how far back ``find`` asks accounting;
        ``run`` runs each SLURM command (``subprocess.run``); ``log`` is told of each retry
        and adopted submission (e.g. the Dagster run's log; default: a logging warning)."""
        self.retry_total_s = retry_total_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.command_timeout_s = command_timeout_s
        self.find_window_days = find_window_days
        self.calls: Counter[str] = Counter()
        self._sleep = sleep
        self._clock = clock
        self._run_command = run
        self._log = log or _log.warning
        self._user = getpass.getuser()

    # -- the Launcher interface ----------------------------------------------------------------

    def submit(
        self,
        script: Path,
        *,
        job_name: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        time_limit: str | None = None,
    ) -> str:
        """``sbatch --job-name=NAME [--time=T] script ARG...`` from the script's folder; the job id.

        The log folders named by ``#SBATCH --output/--error`` are created first. When a
        submission times out in a way that may have queued the job anyway, a live job of the
        same name is taken as ours rather than submitting a second one.
        """
        script = Path(script).resolve()
        if not script.is_file():
            raise CkError(
                f"cannot submit {script}: no such file (materialize its run_config first)"
            )
        BatchHeader.read(script).make_log_dirs(job_name=job_name, user=self._user)
        options = [f"--job-name={job_name}"] + ([f"--time={time_limit}"] if time_limit else [])
        argv = ["sbatch", "--parsable", *options, str(script), *map(str, args)]
        run_env = None if env is None else child_environment(env)
        try:
            result = self._run(
                argv, cwd=script.parent, env=run_env, adopt=lambda: self._live_job_named(job_name)
            )
        except _AlreadySubmitted as done:
            self._log(f"sbatch timed out but job {done.job_id} ({job_name}) is queued: using it")
            return done.job_id
        if result.returncode != 0:
            message = _clean(result.stderr) or f"sbatch exited {result.returncode}"
            raise SubmissionRefused(
                f"SLURM refused {script.name} (job {job_name}): {message}. "
                "Fix the #SBATCH request (partition, gres, constraint, "
                "memory, time) or the run's compute settings."
            )
        job_id = result.stdout.strip().split(";", 1)[0]
        if not job_id.isdigit():
            raise CkError(f"sbatch accepted {script} but printed no job id: {result.stdout!r}")
        return job_id

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """One ``squeue`` for all the jobs, then one ``sacct`` for those squeue has forgotten;
        a job neither knows is UNKNOWN."""
        wanted = list(dict.fromkeys(str(j) for j in job_ids))
        if not wanted:
            return {}
        found = {s.job_id: s for s in self._squeue(["-j", ",".join(wanted)])}
        missing = [j for j in wanted if j not in found]
        if missing:
            found.update({s.job_id: s for s in self._sacct_statuses(["-j", ",".join(missing)])})
        return {
            j: found.get(j)
            or JobStatus(j, "", JobState.UNKNOWN, reason="neither squeue nor sacct knows this job")
            for j in wanted
        }

    def find(self, job_name: str) -> list[JobStatus]:
        """This user's jobs named ``job_name``: squeue first, then accounting for older ones."""
        found = {s.job_id: s for s in self._squeue(["--user", self._user]) if s.name == job_name}
        if not any(not s.state.is_final for s in found.values()):
            sacct_args = ["--user", self._user, "--starttime", f"now-{self.find_window_days}days"]
            if "," not in job_name:  # sacct splits --name on commas; filter here instead
                sacct_args.append(f"--name={job_name}")
            for status in self._sacct_statuses(sacct_args):
                if status.name == job_name:
                    found.setdefault(status.job_id, status)
        return order_found(found.values())

    def accounting(self, job_id: str) -> JobAccounting:
        """The job's status (squeue, or sacct once squeue forgot it) with what only accounting
        keeps: start, end and peak memory (None on a cluster without accounting)."""
        job_id = str(job_id)
        live = self.statuses([job_id])[job_id]
        rows = self._sacct(["-j", job_id], _SACCT_ACCOUNTING_FIELDS, steps=True)
        main = next((r for r in rows if r[0] == job_id), None)
        rss = [b for b in (_bytes(r[3]) for r in rows) if b is not None]
        status, signal = split_exit_code(live.exit_code)
        return JobAccounting(
            job_id=job_id,
            name=live.name,
            state=live.state,
            reason=live.reason,
            exit_code=live.exit_code,
            exit_status=status,
            exit_signal=signal,
            elapsed_s=live.elapsed_s,
            node=live.node,
            max_rss_bytes=max(rss) if rss else None,
            start_time=_time_or_none(main[1]) if main else None,
            end_time=_time_or_none(main[2]) if main else None,
        )

    def cancel(self, job_id: str) -> None:
        """``scancel JOB``; a job that already ended is left as it is."""
        result = self._run(["scancel", str(job_id)])
        message = _clean(result.stderr)
        if result.returncode != 0 and "already completing or completed" not in message:
            raise CkError(f"cannot cancel SLURM job {job_id}: {message}")

    def log_path(self, job_id: str) -> Path | None:
        """The job's StdOut file, with SLURM's %-patterns filled in."""
        return self.statuses([str(job_id)])[str(job_id)].log_path

    # -- commands --------------------------------------------------------------------------------

    def _squeue(self, selection: list[str]) -> list[JobStatus]:
        """squeue rows (all states) for a selection such as ``-j 1,2`` or ``--user me``."""
        result = self._run(
            ["squeue", "--states=all", "--noheader", *selection, f"--Format={_SQUEUE_FORMAT}"]
        )
        if result.returncode != 0:
            if "invalid job id" in result.stderr.lower():  # one job asked for, long gone
                return []
            raise CkError(f"squeue failed: {_clean(result.stderr)}")
        return [_status_from_squeue(line) for line in result.stdout.splitlines() if line]

    def _sacct_statuses(self, selection: list[str]) -> list[JobStatus]:
        """Statuses of jobs squeue no longer knows, from accounting (no log path there)."""
        statuses = []
        for job_id, state, reason, exit_code, elapsed, node, name in self._sacct(
            selection, _SACCT_STATUS_FIELDS, steps=False
        ):
            statuses.append(
                JobStatus(
                    job_id,
                    name,
                    JobState.parse(state),
                    reason=_none_is_empty(reason),
                    exit_code=exit_code,
                    elapsed_s=int(elapsed or 0),
                    node=_none_is_empty(node),
                )
            )
        return statuses

    def _sacct(self, selection: list[str], fields: str, *, steps: bool) -> list[list[str]]:
        """``sacct -P`` rows (a job name, always last, may hold the separator); [] when this
        cluster keeps no accounting."""
        argv = ["sacct", "--parsable2", "--noheader", f"--format={fields}", *selection]
        if not steps:
            argv.insert(1, "--allocations")
        result = self._run(argv)
        if result.returncode != 0:
            if "accounting storage is disabled" in result.stderr.lower():
                return []
            raise CkError(f"sacct failed: {_clean(result.stderr)}")
        count = fields.count(",") + 1
        return [
            line.split("|", count - 1)
            for line in result.stdout.splitlines()
            if line.count("|") >= count - 1
        ]

    def _live_job_named(self, job_name: str) -> str | None:
        """The id of a pending/running job of this user with this name, if there is one."""
        alive = [s for s in self.find(job_name) if not s.state.is_final]
        return alive[0].job_id if alive else None

    def _run(
        self,
        argv: list[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        adopt: Callable[[], str | None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run one SLURM command, retrying with backoff while the controller does not answer.

        ``adopt`` (for sbatch) is asked before a retry after a failure that may have gone
        through; a job id it returns ends the retries with ``_AlreadySubmitted``.
        """
        deadline = self._clock() + self.retry_total_s
        pause = self.retry_initial_s
        while True:
            self.calls[argv[0]] += 1
            try:
                result = self._run_command(
                    argv,
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=self.command_timeout_s,
                    stdin=subprocess.DEVNULL,
                )
            except FileNotFoundError as exc:
                raise CkError(
                    f"{argv[0]} is not on PATH: install the SLURM client or set CK_LAUNCHER=local"
                ) from exc
            except subprocess.TimeoutExpired:
                problem = f"no answer within {self.command_timeout_s:g}s"
                maybe_done = True
            else:
                lowered = result.stderr.lower()
                if result.returncode == 0 or not any(s in lowered for s in _CONTROLLER_DOWN):
                    return result
                problem = _clean(result.stderr)
                maybe_done = any(s in lowered for s in _MAYBE_SUBMITTED)
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ControllerUnavailable(
                    f"the SLURM controller did not answer `{argv[0]}` for "
                    f"{self.retry_total_s:g}s: {problem}. Check `scontrol ping` and "
                    "`sinfo`, or ask the cluster's administrators."
                )
            self._log(
                f"{argv[0]}: controller not answering ({problem}); "
                f"retrying in {min(pause, remaining):.1f}s"
            )
            self._sleep(min(pause, remaining))
            pause = min(pause * 2, self.retry_max_s)
            if adopt is not None and maybe_done:
                adopted = adopt()
                if adopted is not None:
                    raise _AlreadySubmitted(adopted)


class _AlreadySubmitted(Exception):
    """A timed-out sbatch that queued its job after all (internal to SlurmLauncher.submit)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


def _status_from_squeue(line: str) -> JobStatus:
    """One ``_SQUEUE_FORMAT`` row."""
    fields = line.split("|", _SQUEUE_FIELDS - 1)
    if len(fields) != _SQUEUE_FIELDS:
        raise CkError(f"squeue printed a row this version of ck_dagster cannot read: {line!r}")
    job_id, state, reason, raw_exit, used, node, user, stdout, name = fields
    node = _none_is_empty(node)
    log_path = None
    if stdout and stdout != "(null)":
        log_path = Path(
            expand_log_pattern(stdout, job_id=job_id, job_name=name, user=user, node=node)
        )
    return JobStatus(
        job_id=job_id,
        name=name,
        state=JobState.parse(state),
        reason=_none_is_empty(reason),
        exit_code=exit_code_from_wait_status(int(raw_exit or 0)),
        elapsed_s=parse_duration(used) or 0,
        node=node,
        log_path=log_path,
    )


def _none_is_empty(text: str) -> str:
    """SLURM prints "None" / "(null)" for an empty field."""
    return "" if text.strip() in ("None", "(null)", "") else text.strip()


def _time_or_none(text: str) -> str | None:
    """sacct's Start/End, None for "Unknown" / "None"."""
    return None if text in ("", "Unknown", "None") else text


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _bytes(text: str) -> int | None:
    """sacct's MaxRSS (``3284K``, ``1.50G``) in bytes; None when empty."""
    text = text.strip()
    if not text:
        return None
    unit = text[-1].upper() if text[-1].isalpha() else ""
    try:
        return int(float(text[: len(text) - len(unit)]) * _UNITS[unit])
    except (ValueError, KeyError):
        return None


def _clean(stderr: str) -> str:
    """SLURM's message without the ``sbatch: error:`` prefixes, on one line."""
    lines = [line.split("error: ", 1)[-1].strip() for line in stderr.splitlines()]
    return "; ".join(line for line in lines if line)
