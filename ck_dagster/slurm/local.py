"""The local back-end: a job script run as a detached process, for machines without SLURM.

Each job gets a folder under the state directory (default ``~/.local/state/ck_dagster/
local-jobs``, or ``CK_LOCAL_JOBS_DIR``): ``job.json`` (what to run, written at submission),
``wrapper.pid``, ``job.pgid``, ``result.json`` (how it ended) and ``cancel`` (a request). A small
wrapper process, in its own session so it outlives the submitter, runs the script in a session
(and so a process group) of its own, enforces ``--time``, forwards cancellation, and records the
exit.

Run as ``python -m ck_dagster.slurm.local JOB_DIR`` it is that wrapper.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ck_dagster.errors import CkError
from ck_dagster.fileio import atomic_write_text
from ck_dagster.settings import Settings, child_environment
from ck_dagster.slurm.batch_header import BatchHeader
from ck_dagster.slurm.launcher import order_found
from ck_dagster.slurm.states import (
    JobAccounting,
    JobState,
    JobStatus,
    parse_duration,
    split_exit_code,
)

DEFAULT_STATE_DIR = Path("~/.local/state/ck_dagster/local-jobs")
#: seconds between SIGTERM and SIGKILL when a job is cancelled or runs out of time (SLURM's
#: KillWait).
KILL_WAIT_S = 5.0
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


class LocalLauncher:
    """Runs batch scripts on this machine, with SLURM's log names, states and exit codes."""

    name = "local"

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        """``state_dir``: where job records live (default ``CK_LOCAL_JOBS_DIR``, else
        ``~/.local/state/ck_dagster/local-jobs``)."""
        chosen = state_dir or Settings.from_env().local_jobs_dir or DEFAULT_STATE_DIR
        self.state_dir = Path(chosen).expanduser().resolve()
        self.calls: Counter[str] = Counter()

    def submit(
        self,
        script: Path,
        *,
        job_name: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        time_limit: str | None = None,
    ) -> str:
        """Start ``script ARG...`` detached, logging where its ``#SBATCH --output`` says, stopped
        after ``time_limit`` (else the script's ``--time``) as SLURM would."""
        script = Path(script).resolve()
        if not script.is_file():
            raise CkError(f"cannot run {script}: no such file (materialize its run_config first)")
        header = BatchHeader.read(script)
        job_id = self._next_id()
        job_dir = self.state_dir / job_id
        job_dir.mkdir(mode=0o700)
        user, node = getpass.getuser(), socket.gethostname()
        logs = {
            stream: str(
                header.log_file(pattern, job_id=job_id, job_name=job_name, user=user, node=node)
            )
            for stream, pattern in (("stdout", header.output), ("stderr", header.error))
            if pattern
        }
        for log in logs.values():
            Path(log).parent.mkdir(parents=True, exist_ok=True)
        record = {
            "job_id": job_id,
            "name": job_name,
            "command": [*_interpreter(script), str(script), *map(str, args)],
            "workdir": str(header.workdir),
            "stdout": logs["stdout"],
            "stderr": logs.get("stderr"),
            "append": header.append,
            "time_limit_s": parse_duration(time_limit) if time_limit else header.time_limit_s,
            "node": node,
            "submit_time": time.time(),
        }
        atomic_write_text(job_dir / "job.json", json.dumps(record, indent=1), mode=0o600)
        job_env = {
            **child_environment(env),
            "SLURM_JOB_ID": job_id,
            "SLURM_JOBID": job_id,
            "SLURM_JOB_NAME": job_name,
            "SLURM_SUBMIT_DIR": str(script.parent),
            "SLURM_JOB_NODELIST": node,
        }
        self.calls["spawn"] += 1
        # The first process forks the wrapper, records its pid and exits: nothing to reap later.
        with open(job_dir / "wrapper.err", "ab") as errors:
            starter = subprocess.run(
                [sys.executable, "-m", "ck_dagster.slurm.local", str(job_dir)],
                cwd=_PACKAGE_PARENT,
                env=job_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
                check=False,
            )
        if starter.returncode != 0 or not (job_dir / "wrapper.pid").exists():
            raise CkError(
                f"could not start local job {job_id} ({job_name}); see {job_dir / 'wrapper.err'}"
            )
        return job_id

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Read the jobs' records (one pass over the state directory)."""
        self.calls["scan"] += 1
        return {str(j): self._status(str(j)) for j in dict.fromkeys(job_ids)}

    def find(self, job_name: str) -> list[JobStatus]:
        """Local jobs named ``job_name``, alive ones first, then newest first."""
        self.calls["scan"] += 1
        found = []
        for job_dir in self.state_dir.glob("*/job.json"):
            record = _read_json(job_dir)
            if record and record["name"] == job_name:
                found.append(self._status(record["job_id"]))
        return order_found(found)

    def accounting(self, job_id: str) -> JobAccounting:
        """The job's record: exit code, elapsed, peak memory (of its largest process)."""
        status = self._status(str(job_id))
        result = _read_json(self.state_dir / str(job_id) / "result.json") or {}
        exit_status, exit_signal = split_exit_code(status.exit_code)
        return JobAccounting(
            job_id=status.job_id,
            name=status.name,
            state=status.state,
            reason=status.reason,
            exit_code=status.exit_code,
            exit_status=exit_status,
            exit_signal=exit_signal,
            elapsed_s=status.elapsed_s,
            node=status.node,
            max_rss_bytes=result.get("max_rss_bytes"),
            start_time=result.get("start_time"),
            end_time=result.get("end_time"),
        )

    def cancel(self, job_id: str) -> None:
        """Ask the job's wrapper to stop it (SIGTERM, then SIGKILL after KILL_WAIT_S); kill the
        job's process group directly when the wrapper is gone."""
        job_dir = self._job_dir(str(job_id))
        if (job_dir / "result.json").exists():
            return
        self.calls["kill"] += 1
        wrapper = _read_int(job_dir / "wrapper.pid")
        if wrapper is not None and _alive(wrapper, job_dir):
            (job_dir / "cancel").touch()
            os.kill(wrapper, signal.SIGTERM)
            return
        group = _read_int(job_dir / "job.pgid")  # the wrapper died: its job may live on
        if group is not None:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_path(self, job_id: str) -> Path | None:
        """Where the job's standard output goes (its ``#SBATCH --output``)."""
        return self._status(str(job_id)).log_path

    def _job_dir(self, job_id: str) -> Path:
        """The folder of a job this launcher ran; CkError for an id it does not know."""
        job_dir = self.state_dir / job_id
        if not job_id.isdigit() or not (job_dir / "job.json").exists():
            raise CkError(
                f"no local job {job_id!r} in {self.state_dir} (was it run with another "
                "CK_LOCAL_JOBS_DIR?)"
            )
        return job_dir

    def _next_id(self) -> str:
        """The next job id: a counter under a lock, never reused even when records are deleted."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            counter = self.state_dir / "next_id"
            job_id = _read_int(counter) or 1
            atomic_write_text(counter, f"{job_id + 1}\n")
        return str(job_id)

    def _status(self, job_id: str) -> JobStatus:
        """One job's status from its records."""
        job_dir = self.state_dir / job_id
        record = _read_json(job_dir / "job.json") if job_id.isdigit() else None
        if record is None:
            return JobStatus(
                job_id, "", JobState.UNKNOWN, reason=f"no local job {job_id} in {self.state_dir}"
            )
        common = {
            "job_id": job_id,
            "name": record["name"],
            "node": record["node"],
            "log_path": Path(record["stdout"]),
        }
        result = _read_json(job_dir / "result.json")
        wrapper = _read_int(job_dir / "wrapper.pid")
        if result is None and wrapper is not None and _alive(wrapper, job_dir):
            return JobStatus(
                state=JobState.RUNNING, elapsed_s=int(time.time() - record["submit_time"]), **common
            )
        # Read again: the wrapper may have recorded the end and exited since the first read.
        result = result or _read_json(job_dir / "result.json")
        if result is None:
            cancelled = (job_dir / "cancel").exists()
            return JobStatus(
                state=JobState.CANCELLED if cancelled else JobState.FAILED,
                reason=f"the local job wrapper (pid {wrapper}) ended without recording an exit "
                "code (killed, or the machine restarted)",
                elapsed_s=0,
                exit_code="0:9",
                **common,
            )
        return JobStatus(
            state=JobState(result["state"]),
            reason=result["reason"],
            exit_code=result["exit_code"],
            elapsed_s=result["elapsed_s"],
            **common,
        )


def _interpreter(script: Path) -> list[str]:
    """How to run a script the way sbatch does: its ``#!`` line, else /bin/sh."""
    with open(script, "rb") as handle:
        first = handle.readline().decode("utf-8", errors="replace").strip()
    return shlex.split(first[2:]) if first.startswith("#!") else ["/bin/sh"]


def _read_json(path: Path) -> Any:
    """A JSON record, or None when it does not exist (yet)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _read_int(path: Path) -> int | None:
    """An integer record (a pid, a counter), or None."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int, job_dir: Path) -> bool:
    """Is ``pid`` still this job's wrapper? (A reused pid or a zombie is not.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self").exists():
        return True
    try:
        return str(job_dir).encode() in cmdline.read_bytes()
    except OSError:
        return False


class _Wrapper:
    """Runs one job's command and records how it ended (the process ``submit`` detaches)."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.record = json.loads((job_dir / "job.json").read_text())
        self.stop_requested = False
        self.child: subprocess.Popen[bytes] | None = None

    def request_stop(self, signum: int, frame: object) -> None:
        """Signal handler: note the request; the wait loop acts on it."""
        self.stop_requested = True

    def run(self) -> None:
        """Run the command, enforce the time limit and cancellation, write result.json."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.request_stop)
        record = self.record
        started = time.time()
        mode = "ab" if record["append"] else "wb"
        out = open(record["stdout"], mode)  # noqa: SIM115 (the child holds them; closed below)
        err = open(record["stderr"], mode) if record["stderr"] else None  # noqa: SIM115
        try:
            self.child = subprocess.Popen(
                record["command"],
                cwd=record["workdir"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err or subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:  # no such interpreter or working directory
            (err or out).write(f"ck_dagster: cannot start {record['command']}: {exc}\n".encode())
            returncode, timed_out, launch_error = 127, False, str(exc)
        else:
            atomic_write_text(self.job_dir / "job.pgid", f"{self.child.pid}\n")
            timed_out, launch_error = self._wait(started), ""
            returncode = self.child.returncode
            try:  # like slurmstepd: nothing the script left in the background outlives it
                os.killpg(self.child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        finally:
            out.close()
            if err:
                err.close()
        if launch_error:
            state, reason = JobState.FAILED, f"could not start: {launch_error}"
        elif timed_out:
            state, reason = JobState.TIMEOUT, "TimeLimit"
        elif (self.job_dir / "cancel").exists():
            state, reason = JobState.CANCELLED, ""
        elif returncode == 0:
            state, reason = JobState.COMPLETED, ""
        else:
            state, reason = JobState.FAILED, "NonZeroExitCode"
        ended = time.time()
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        atomic_write_text(
            self.job_dir / "result.json",
            json.dumps(
                {
                    "state": state.value,
                    "reason": reason,
                    "exit_code": f"{returncode}:0" if returncode >= 0 else f"0:{-returncode}",
                    "elapsed_s": int(ended - started),
                    "start_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                    "end_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended)),
                    "max_rss_bytes": peak_kib * (1 if sys.platform == "darwin" else 1024),
                },
                indent=1,
            ),
        )

    def _wait(self, started: float) -> bool:
        """Wait for the command; SIGTERM it on cancel or time-out, SIGKILL after KILL_WAIT_S.
        True when it ran out of time."""
        assert self.child is not None
        limit = self.record["time_limit_s"]
        timed_out, term_sent = False, None
        while True:
            try:
                self.child.wait(timeout=0.5)
                return timed_out
            except subprocess.TimeoutExpired:
                pass
            now = time.time()
            if limit is not None and now - started >= limit and term_sent is None:
                timed_out = True
            if term_sent is None and (
                timed_out or self.stop_requested or (self.job_dir / "cancel").exists()
            ):
                os.killpg(self.child.pid, signal.SIGTERM)
                term_sent = now
            elif term_sent is not None and now - term_sent >= KILL_WAIT_S:
                os.killpg(self.child.pid, signal.SIGKILL)


def _main(job_dir: str) -> None:
    """Entry point of the detached wrapper: fork, record the wrapper's pid, let the first
    process exit so the submitter has nothing to reap."""
    path = Path(job_dir)
    pid = os.fork()
    if pid:
        atomic_write_text(path / "wrapper.pid", f"{pid}\n")
        os._exit(0)
    _Wrapper(path).run()


if __name__ == "__main__":
    _main(sys.argv[1])
