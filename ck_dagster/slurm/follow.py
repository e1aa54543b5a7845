"""Follow many jobs to their end with one status call per cycle, streaming their logs.

The status interval starts short, grows while nothing changes and snaps back on a change, so
a long training job costs the controller one call per 30 s at most. Its end is seen sooner:
every ``poll_initial`` seconds the follower reads the logs and looks for the exit marker each
job script leaves as it exits (:func:`~ck_dagster.slurm.script.exit_marker`; no control-plane
cost), and a new marker makes the next status call due at once. A job killed before its
script could leave one (SIGKILL, a lost node) is still seen by the status calls.
Controller outages are waited out; there is no timeout of our own: SLURM's ``--time`` ends a
job, and the follower sees that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ck_dagster.errors import CkError
from ck_dagster.slurm.launcher import Launcher
from ck_dagster.slurm.script import exit_marker
from ck_dagster.slurm.states import JobState, JobStatus

_log = logging.getLogger(__name__)
#: status calls at the short interval after a job's exit marker appears, before backing off.
ENDING_CALLS = 10


@dataclass(frozen=True)
class JobEvent:
    """Something the follower saw: a job changed state, wrote log lines, or was lost; or the
    controller did not answer (``job_id`` empty)."""

    kind: str  # "state" | "log" | "lost" | "controller"
    job_id: str
    status: JobStatus | None = None
    previous: JobState | None = None
    lines: tuple[str, ...] = ()
    message: str = ""
    #: wall-clock time (time.time()) when the follower saw it.
    at: float = field(default_factory=time.time)


class JobFollower:
    """Follows jobs of one launcher until each ends; see the module docstring.

    Use as a context manager: when the block is left by an interruption (KeyboardInterrupt,
    Dagster's DagsterExecutionInterruptedError: a BaseException that is not an Exception), the
    jobs that have not ended are cancelled; ``stop()`` from another thread ends ``events()``.
    """

    def __init__(
        self,
        launcher: Launcher,
        *,
        poll_initial: float = 2.0,
        poll_max: float = 30.0,
        backoff: float = 1.5,
        follow_logs: bool = True,
        max_log_lines: int = 200,
        lost_after: int = 10,
        cancel_on_interrupt: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        """``lost_after``: consecutive status calls in which the scheduler does not know a job
        before it is reported lost. ``clock``/``sleep`` are injectable for tests; the default
        sleep wakes up at once on ``stop()``."""
        self.launcher = launcher
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.backoff = backoff
        self.follow_logs = follow_logs
        self.max_log_lines = max_log_lines
        self.lost_after = lost_after
        self.cancel_on_interrupt = cancel_on_interrupt
        self._clock = clock
        self._stopped = threading.Event()
        self._sleep = sleep if sleep is not None else self._stopped.wait
        #: latest status of every job followed, by id.
        self.statuses: dict[str, JobStatus] = {}
        self._pending: list[str] = []
        self._log_offsets: dict[str, int] = {}
        self._unknown_polls: dict[str, int] = {}
        self._lost: set[str] = set()
        self._drained: set[str] = set()
        #: the exit marker each job was last seen with (its mtime), so each one counts once.
        self._markers: dict[str, float] = {}
        #: quick status calls left for jobs whose marker is out but whose end SLURM has not
        #: shown yet (the controller lags a script's exit by a few seconds).
        self._ending: dict[str, int] = {}
        self._interval = poll_initial
        self._next_status = clock()

    def add(self, *job_ids: str) -> None:
        """Follow these jobs too (may be called between events: they are polled next)."""
        for job_id in job_ids:
            if job_id not in self.statuses and job_id not in self._pending:
                self._pending.append(str(job_id))

    def follow_again(self, job_id: str) -> None:
        """Follow a job seen ending once more: the scheduler requeued it itself."""
        self.statuses.pop(job_id, None)
        self._drained.discard(job_id)
        self._lost.discard(job_id)
        self.add(job_id)

    @property
    def unfinished(self) -> list[str]:
        """Ids of followed jobs not known to have ended (nor lost)."""
        done = {j for j, s in self.statuses.items() if s.state.is_final} | self._lost
        return [j for j in [*self.statuses, *self._pending] if j not in done]

    def stop(self) -> None:
        """End ``events()`` at its next wake-up (thread-safe); jobs are left running."""
        self._stopped.set()

    def cancel_unfinished(self) -> list[str]:
        """Cancel every followed job that has not ended; the ids cancelled."""
        cancelled = []
        for job_id in self.unfinished:
            try:
                self.launcher.cancel(job_id)
                cancelled.append(job_id)
            except CkError as exc:
                _log.warning("could not cancel job %s: %s", job_id, exc)
        return cancelled

    def events(self) -> Iterator[JobEvent]:
        """Yield events until every followed job has ended (or ``stop()``).

        One ``statuses()`` call per status cycle whatever the number of jobs; logs are read
        every ``poll_initial`` seconds in between.
        """
        while self.unfinished and not self._stopped.is_set():
            yield from self.poll()
            if not self.unfinished:
                break
            self.sleep(self.seconds_to_next_poll())

    def poll(self) -> list[JobEvent]:
        """One wake-up: a status call when one is due (or jobs were just added), then new log
        lines, which come first among the events: a job wrote them before the end the status
        call may show. Callers that interleave other work (submitting as slots free up) loop on
        this with :meth:`sleep` instead of using :meth:`events`."""
        events: list[JobEvent] = []
        if self._new_exit_markers():
            self._interval = self.poll_initial
            self._next_status = self._clock()
        if self._pending or self._clock() >= self._next_status:
            changes = list(self._poll())
            events += changes
            if any(e.kind == "controller" for e in changes):
                self._interval = min(max(self._interval, self.poll_initial) * 2, self.poll_max)
            elif any(e.kind in ("state", "lost") for e in changes) or self._still_ending():
                self._interval = self.poll_initial
            else:
                self._interval = min(self._interval * self.backoff, self.poll_max)
            self._next_status = self._clock() + self._interval
        if self.follow_logs:
            events = [*self._read_logs(), *events]
        return events

    def seconds_to_next_poll(self) -> float:
        """How long until the next status call or log read is due."""
        return max(0.0, min(self.poll_initial, self._next_status - self._clock()))

    def sleep(self, seconds: float) -> None:
        """Sleep (woken at once by ``stop()`` unless a custom sleep was injected)."""
        self._sleep(seconds)

    def wait(self, on_event: Callable[[JobEvent], object] | None = None) -> dict[str, JobStatus]:
        """Follow to the end, passing each event to ``on_event``; the last status of each job."""
        for event in self.events():
            if on_event is not None:
                on_event(event)
        return dict(self.statuses)

    def __enter__(self) -> JobFollower:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if error is not None and not isinstance(error, Exception) and self.cancel_on_interrupt:
            cancelled = self.cancel_unfinished()
            if cancelled:
                _log.warning("interrupted: cancelled job(s) %s", ", ".join(cancelled))

    def _new_exit_markers(self) -> bool:
        """Has a followed job's script left an exit marker since the last look?"""
        new = False
        for job_id in self.unfinished:
            status = self.statuses.get(job_id)
            if status is None or status.log_path is None:
                continue
            try:
                mtime = exit_marker(status.log_path, job_id).stat().st_mtime
            except OSError:
                continue
            if self._markers.get(job_id) != mtime:
                self._markers[job_id] = mtime
                self._ending[job_id] = ENDING_CALLS
                new = True
        return new

    def _still_ending(self) -> bool:
        """Spend one quick call on each job whose marker is out but that SLURM still shows
        unfinished; True while any has calls left (then the status interval stays short)."""
        waiting = [j for j in self.unfinished if self._ending.get(j, 0) > 0]
        for job_id in waiting:
            self._ending[job_id] -= 1
        return bool(waiting)

    def _poll(self) -> Iterable[JobEvent]:
        """One status call; events for what changed."""
        self.statuses.update({j: JobStatus(j, "", JobState.UNKNOWN) for j in self._pending})
        self._pending.clear()
        wanted = self.unfinished
        try:
            fresh = self.launcher.statuses(wanted)
        except CkError as exc:  # ControllerUnavailable, or a client error: wait and retry
            yield JobEvent("controller", "", message=str(exc))
            return
        for job_id in wanted:
            status = fresh.get(job_id)
            if status is None:
                continue
            previous = self.statuses[job_id]
            if status.state is JobState.UNKNOWN:
                self._unknown_polls[job_id] = self._unknown_polls.get(job_id, 0) + 1
                if self._unknown_polls[job_id] >= self.lost_after:
                    self._lost.add(job_id)  # ended, as far as following goes
                    yield JobEvent(
                        "lost",
                        job_id,
                        status,
                        previous.state,
                        message=f"job {job_id}: {status.reason}",
                    )
                continue
            self._unknown_polls.pop(job_id, None)
            self.statuses[job_id] = status
            if status.state is not previous.state:
                yield JobEvent("state", job_id, status, previous.state)

    def _read_logs(self) -> Iterable[JobEvent]:
        """New complete lines in each followed job's log since the last read."""
        for job_id, status in self.statuses.items():
            if status.log_path is None or job_id in self._drained:
                continue
            if status.state.is_final:
                self._drained.add(job_id)  # this is its last read
            lines = self._new_lines(job_id, status.log_path, final=status.state.is_final)
            if lines:
                yield JobEvent("log", job_id, status, lines=tuple(lines))

    def _new_lines(self, job_id: str, path: Path, *, final: bool) -> list[str]:
        """Lines appended to ``path`` since the last call (the last ``max_log_lines``).
        A file that shrank (a requeued job starts a new log) is read from the start."""
        offset = self._log_offsets.get(job_id, 0)
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, 2)
                if size < offset:
                    offset = 0
                start = max(offset, size - 256 * self.max_log_lines)
                handle.seek(start)
                data = handle.read(size - start)
        except OSError:
            return []
        if not final:  # keep a partial last line for next time
            data = data[: data.rfind(b"\n") + 1]
        self._log_offsets[job_id] = start + len(data)
        text = data.decode("utf-8", errors="replace")
        return text.splitlines()[-self.max_log_lines :]
