"""Run many job scripts to their end: adopt, re-attach, throttle, resubmit, never double.

For each request, in order of preference:

1. its outputs are already in place: **adopt** them, no job;
2. another live process holds its claim (a record shared by every process, so that one run
   never gets two jobs): **follow** that process's job to its end, never submitting;
3. a job of its name is pending or running (submitted by an earlier, maybe killed, process):
   **re-attach** to it, unless it was submitted with a config that changed since: then it is
   cancelled at once and the run submitted again;
4. otherwise **submit** it, once a slot is free (a shared cap on jobs in the queue).

Jobs are followed together (one status call per cycle). A job stopped from outside
(PREEMPTED, NODE_FAIL, BOOT_FAIL, or TIMEOUT when the request says how to go on) is
resubmitted as the request says (e.g. resuming from its last saved epoch, with more time),
at most ``max_resubmits`` times; an OUT_OF_MEMORY job is retried once with the arguments the
request gives for that (e.g. a halved batch size). An interruption cancels every job this
runner submitted or re-attached to, and gives back the slots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from ck_dagster.errors import CkError
from ck_dagster.fileio import tail
from ck_dagster.slurm.follow import JobEvent, JobFollower
from ck_dagster.slurm.launcher import Launcher
from ck_dagster.slurm.states import JobAccounting, JobState, JobStatus

#: end states after which a job is simply run again (the job did nothing wrong).
RESUBMIT_STATES = frozenset({JobState.PREEMPTED, JobState.NODE_FAIL, JobState.BOOT_FAIL})
#: end states after which a request may say how to go on (:attr:`JobRequest.resubmission`).
STOPPED_STATES = RESUBMIT_STATES | {JobState.TIMEOUT}


class Slots(Protocol):
    """A shared cap on jobs in the queue (a Dagster concurrency pool in production)."""

    def acquire(self, key: str) -> bool:
        """Take a slot for ``key`` if one is free (non-blocking); True once taken."""
        ...

    def release(self, key: str) -> None:
        """Give back ``key``'s slot (or its place in the queue for one)."""
        ...

    def capacity(self) -> int | None:
        """How many jobs may be in the queue at once (None: no cap)."""
        ...


class Claims(Protocol):
    """Which process submits each request's job: one at a time across every process (the
    Dagster instance in production), so that two materializations never start two jobs."""

    def claim(self, requests: Sequence[JobRequest]) -> dict[str, str]:
        """Claim every request for this process; for those another live process holds, who
        holds it (e.g. ``Dagster run X``), by key."""
        ...

    def take_over(self, request: JobRequest, note: str) -> None:
        """Claim ``request`` from a holder whose job is stale, saying why in ``note``."""
        ...

    def lost(self, request: JobRequest) -> str | None:
        """What the process that took ``request`` over from this one said, else None."""
        ...

    def release(self, request: JobRequest) -> None:
        """Give back this process's claim on ``request``."""
        ...


class NoClaims:
    """Every request is this process's: for a runner that is alone (tests, tools)."""

    def claim(self, requests: Sequence[JobRequest]) -> dict[str, str]:
        return {}

    def take_over(self, request: JobRequest, note: str) -> None:
        return None

    def lost(self, request: JobRequest) -> str | None:
        return None

    def release(self, request: JobRequest) -> None:
        return None


class UnlimitedSlots:
    """No cap: every job is submitted at once."""

    def acquire(self, key: str) -> bool:
        return True

    def release(self, key: str) -> None:
        return None

    def capacity(self) -> int | None:
        return None


@dataclass(frozen=True)
class Attempt:
    """One submission (or re-attachment) and how it ended."""

    job_id: str
    args: tuple[str, ...]
    reattached: bool = False
    state: JobState | None = None
    reason: str = ""
    #: the ``--time`` it was submitted with; None: the script's own.
    time: str | None = None
    #: why it was submitted (e.g. "job 12 ended PREEMPTED: resumed from epoch_0, training on
    #: at epoch 1"); "" for a first submission from scratch.
    why: str = ""


@dataclass(frozen=True)
class Resubmission:
    """How to submit a request again after its job was stopped from outside."""

    args: tuple[str, ...]
    #: ``--time`` for the new job; None: the script's own.
    time: str | None = None
    #: what is resumed, for people ("resumed from epoch_0, training on at epoch 1"); "" when
    #: started from scratch.
    resumes: str = ""


def restart(state: JobState, attempt: Attempt) -> Resubmission | None:
    """Run the job again as it was when the job did nothing wrong; None after a TIMEOUT (the
    same job would only run out of time again)."""
    if state is JobState.TIMEOUT:
        return None
    return Resubmission(attempt.args, attempt.time)


@dataclass
class JobRequest:
    """One job to run to its end, for one key (a partition)."""

    key: str
    script: Path
    job_name: str
    #: whether the job's outputs are all in place (then it is adopted, not run).
    is_done: Callable[[], bool]
    #: called right before every submission (create folders, set old outputs aside, ...).
    before_submit: Callable[[], None] = lambda: None
    #: script arguments for the one retry after OUT_OF_MEMORY; None when no retry can help.
    oom_retry_args: Callable[[], list[str] | None] = lambda: None
    #: run again even when the outputs are in place.
    force: bool = False
    #: what ``before_submit`` did that a person should know (e.g. old outputs set aside).
    notes: list[str] = field(default_factory=list)
    #: what the job does to the run, for messages ("EXP/RUN is being trained by ...").
    verb: str = "run"
    #: what changed since a live job of this request was submitted ([] when nothing did or
    #: it cannot be told); such a job is stale: cancelled, and the request submitted again.
    changes_since_submitted: Callable[[], list[str]] = lambda: []
    #: the folder the job logs into, when it is not the script's (``output.base_directory``).
    log_folder: Path | None = None
    #: how to go on after ``attempt`` ended in one of :data:`STOPPED_STATES`; None: fail. A
    #: resubmission that ``resumes`` keeps the outputs (``before_submit`` is not called).
    resubmission: Callable[[JobState, Attempt], Resubmission | None] = restart
    #: called right before the first submission: how to go on from what an earlier job left
    #: (e.g. its saved epochs); None: submit afresh (``before_submit`` first).
    resume_first: Callable[[], Resubmission | None] = lambda: None
    #: jobs of other names that may be doing this request's work (a job evaluating several
    #: runs), as (job name, folder it logs into): a live one is followed, never doubled.
    shared_jobs: Callable[[], list[tuple[str, Path]]] = lambda: []


@dataclass
class JobOutcome:
    """How a request ended: ``adopted``, ``completed`` or ``failed``."""

    key: str
    status: str
    attempts: list[Attempt] = field(default_factory=list)
    accounting: JobAccounting | None = None
    log_path: Path | None = None
    message: str = ""
    log_tail: str = ""
    oom_retried: bool = False
    #: who holds the claim when this process only follows another one's job.
    following: str = ""

    @property
    def job_id(self) -> str | None:
        return self.attempts[-1].job_id if self.attempts else None

    @property
    def ok(self) -> bool:
        return self.status in ("adopted", "completed")


class JobRunner:
    """Runs :class:`JobRequest` s through a launcher; see the module docstring."""

    def __init__(
        self,
        launcher: Launcher,
        *,
        slots: Slots | None = None,
        on_event: Callable[[str, str], object] = lambda key, message: None,
        on_log: Callable[[str, str], object] = lambda key, line: None,
        max_resubmits: int = 2,
        poll_initial: float = 2.0,
        poll_max: float = 30.0,
        slot_wait: float = 5.0,
        requeue_checks: int = 3,
        requeue_wait: float = 2.0,
        follower: JobFollower | None = None,
        claims: Claims | None = None,
        join_wait: float = 30.0,
        on_outcome: Callable[[JobOutcome], object] = lambda outcome: None,
    ):
        """``on_event(key, message)`` receives what happens to the jobs (submitted, state
        changes, resubmissions, failures); ``on_log(key, line)`` each line a job writes to its
        log; ``on_outcome(outcome)`` each request's outcome as soon as it is final (adopted,
        completed or failed), while the other jobs still run. ``slot_wait``: how often to look
        for a free slot; ``join_wait``: how long to wait for the job of a run another process
        has claimed to reach the queue."""
        self.launcher = launcher
        self.on_outcome = on_outcome
        self._outcomes: dict[str, JobOutcome] = {}
        self.slots = slots or UnlimitedSlots()
        self.claims = claims or NoClaims()
        self.join_wait = join_wait
        self.on_event = on_event
        self.on_log = on_log
        self.max_resubmits = max_resubmits
        self.slot_wait = slot_wait
        self.requeue_checks = requeue_checks
        self.requeue_wait = requeue_wait
        self.follower = follower or JobFollower(
            launcher, poll_initial=poll_initial, poll_max=poll_max, cancel_on_interrupt=False
        )

    def run(self, requests: Sequence[JobRequest]) -> dict[str, JobOutcome]:
        """Run every request to its end; outcomes by key (failures included, not raised)."""
        outcomes: dict[str, JobOutcome] = {}
        self._outcomes = outcomes
        waiting: list[JobRequest] = []
        self._by_job: dict[str, list[JobRequest]] = {}  # a shared job: several requests
        self._holding: set[str] = set()
        self._watching: set[str] = set()  # jobs another process submitted and holds
        self._told_waiting: set[str] = set()  # keys whose wait for a slot was logged
        todo = []
        for request in requests:
            outcome = outcomes[request.key] = JobOutcome(request.key, "running")
            if request.is_done() and not request.force:
                outcome.status = "adopted"
                self._note_adopted(request, outcome)
                self.slots.release(request.key)  # a job launch() started for it has ended
                self.on_outcome(outcome)
            else:
                todo.append(request)
        held = self.claims.claim(todo) if todo else {}
        self._claimed = [r for r in todo if r.key not in held]
        for request in todo:
            outcome = outcomes[request.key]
            if request.key in held:
                if self._join(request, outcome, held[request.key]):
                    waiting.append(request)
            elif not self._reattach(request, outcome):
                waiting.append(request)
        try:
            while True:
                waiting = self._submit_ready(waiting, outcomes)
                if self.follower.unfinished:
                    for event in self.follower.poll():
                        self._handle(event, outcomes)
                if self.follower.unfinished:
                    pause = self.follower.seconds_to_next_poll()
                    self.follower.sleep(min(pause, self.slot_wait) if waiting else pause)
                elif waiting:  # every slot is taken by other runs: look again soon
                    self.follower.sleep(self.slot_wait)
                else:
                    break
        except BaseException:
            self._cancel_all()
            raise
        finally:
            for key in list(self._holding) + [r.key for r in waiting]:
                self.slots.release(key)
            self._holding.clear()
            for request in self._claimed:
                self.claims.release(request)
        return outcomes

    def launch(self, request: JobRequest) -> str | None:
        """Start ``request``'s job without following it, keeping its claim and slot for a
        later :meth:`run` of the same claimant (which re-attaches, or adopts the outputs): the
        job id, or None when its outputs are in place, another process holds the run, or no
        slot is free (that later run submits it then)."""
        if request.is_done() and not request.force:
            return None
        if self.claims.claim([request]):
            return None
        alive = self._live_jobs(request)
        if alive and not self._cancel_if_stale(request, alive[0]):
            return alive[0].job_id
        if not self.slots.acquire(request.key):
            self.slots.release(request.key)  # leave no place in the queue behind
            return None
        request.before_submit()
        job_id = self.launcher.submit(request.script, job_name=request.job_name)
        self.on_event(request.key, f"submitted job {job_id} ({self.launcher.name})")
        return job_id

    def job_of(self, key: str) -> str | None:
        """The job of request ``key`` in the :meth:`run` under way (None before one)."""
        outcome = self._outcomes.get(key)
        return outcome.job_id if outcome else None

    def free_to_share(self, requests: Sequence[JobRequest]) -> list[JobRequest]:
        """Those of ``requests`` that this process may put into one shared job: to be run
        (not done, or forced), claimed here (the claims stay until :meth:`release_claim` or a
        :meth:`run` of them), and with no live job of their own or shared."""
        todo = [r for r in requests if r.force or not r.is_done()]
        held = self.claims.claim(todo) if todo else {}
        return [r for r in todo if r.key not in held and not self._live_jobs(r)]

    def release_claim(self, request: JobRequest) -> None:
        """Give back a claim :meth:`free_to_share` took (its run went into a shared job)."""
        self.claims.release(request)

    # -- starting jobs --------------------------------------------------------------------

    def _found(self, request: JobRequest) -> list[JobStatus]:
        """Jobs of the request's name that log into its folder: the same name may be used by
        another Dagster instance or a copy of the experiment elsewhere."""
        names = [(request.job_name, request.log_folder or request.script.parent)]
        found = []
        for name, folder in names + request.shared_jobs():
            found += [
                s
                for s in self.launcher.find(name)
                if s.log_path is None or folder.resolve() in s.log_path.resolve().parents
            ]
        return found

    def _note_adopted(self, request: JobRequest, outcome: JobOutcome) -> None:
        done = [s for s in self._found(request) if s.state is JobState.COMPLETED]
        if done:
            outcome.attempts.append(Attempt(done[0].job_id, (), True, done[0].state))
            outcome.log_path = done[0].log_path
        self.on_event(
            request.key,
            "outputs already in place: adopted, no job submitted"
            + (f" (from job {done[0].job_id})" if done else ""),
        )

    def _join(self, request: JobRequest, outcome: JobOutcome, holder: str) -> bool:
        """Follow the job of the process that holds ``request``'s claim; True when that job
        is stale and was cancelled, so that this process claims the run and submits it."""
        alive = self._live_jobs(request, wait_s=self.join_wait)
        if not alive:
            self._fail(
                request,
                outcome,
                f"{request.key} is being {request.verb} by {holder}, "
                "whose job is not in the queue yet: not submitting "
                "another (wait for that run, or terminate it)",
            )
            return False
        job = alive[0]
        if self._cancel_if_stale(request, job, holder):
            self._claimed.append(request)
            return True
        outcome.following = holder
        outcome.attempts.append(Attempt(job.job_id, (), reattached=True))
        self._watching.add(job.job_id)
        self._follow(request, job.job_id)
        self.on_event(
            request.key,
            f"{request.key} is being {request.verb} by {holder}, job "
            f"{job.job_id}: following that job, not submitting another",
        )
        return False

    def _live_jobs(self, request: JobRequest, wait_s: float = 0.0) -> list[JobStatus]:
        """The request's pending or running jobs; waits up to ``wait_s`` for one to appear
        (the claim's holder submits right after claiming)."""
        deadline = time.monotonic() + wait_s
        while True:
            alive = [s for s in self._found(request) if not s.state.is_final]
            if alive or time.monotonic() >= deadline:
                return alive
            self.follower.sleep(1.0)

    def _cancel_if_stale(self, request: JobRequest, job: JobStatus, holder: str = "") -> bool:
        """Cancel a live job submitted before the request's config changed; True if it was."""
        changes = request.changes_since_submitted()
        if not changes:
            return False
        changed = ", ".join(changes[:5]) + (", ..." if len(changes) > 5 else "")
        note = (
            f"job {job.job_id} ({job.state.value}) was submitted before the run was edited "
            f"(changed: {changed}): cancelled it"
        )
        # claimed first: the holder that sees its job cancelled finds out why
        self.claims.take_over(request, note + (f" (it was {holder}'s)" if holder else ""))
        self.launcher.cancel(job.job_id)
        self._await_end(job.job_id)
        request.notes.append(note)
        self.on_event(request.key, f"{note}; submitting the edited run")
        return True

    def _await_end(self, job_id: str, limit_s: float = 120.0) -> None:
        """Wait until a cancelled job has ended, so two jobs never write one folder."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                status = self.launcher.statuses([job_id]).get(job_id)
            except CkError:
                status = None
            if status is not None and status.state.is_final:
                return
            self.follower.sleep(1.0)

    def _reattach(self, request: JobRequest, outcome: JobOutcome) -> bool:
        alive = self._live_jobs(request)
        if not alive:
            return False
        job = alive[0]
        if self._cancel_if_stale(request, job):
            return False
        outcome.attempts.append(Attempt(job.job_id, (), reattached=True))
        self.slots.acquire(request.key)  # it is in the queue already, slot or not
        self._holding.add(request.key)
        self._follow(request, job.job_id)
        self.on_event(
            request.key,
            f"re-attached to job {job.job_id} ({job.state.value}), "
            "submitted earlier; not submitting another",
        )
        return True

    def _submit_ready(
        self, waiting: list[JobRequest], outcomes: dict[str, JobOutcome]
    ) -> list[JobRequest]:
        still_waiting = []
        for request in waiting:
            if not self.slots.acquire(request.key):
                if request.key not in self._told_waiting:
                    self._told_waiting.add(request.key)
                    self.on_event(
                        request.key,
                        "waiting for a free slot of the job pool (every "
                        "slot is held by a job in the queue)",
                    )
                still_waiting.append(request)
                continue
            self._holding.add(request.key)
            try:
                if (again := request.resume_first()) is not None:
                    self._submit(
                        request, outcomes[request.key], again.args, why=again.resumes, resume=True
                    )
                else:
                    self._submit(request, outcomes[request.key], ())
            except CkError as exc:  # refused (bad partition, impossible request), no files
                self._fail(request, outcomes[request.key], f"not submitted: {exc}")
        return still_waiting

    def _submit(
        self,
        request: JobRequest,
        outcome: JobOutcome,
        args: Sequence[str],
        *,
        time_limit: str | None = None,
        why: str = "",
        resume: bool = False,
    ) -> None:
        if not resume:
            request.before_submit()
        job_id = self.launcher.submit(
            request.script, job_name=request.job_name, args=args, time_limit=time_limit
        )
        outcome.attempts.append(Attempt(job_id, tuple(args), time=time_limit, why=why))
        self._follow(request, job_id)
        suffix = f" with {' '.join(args)}" if args else ""
        suffix += f", --time={time_limit}" if time_limit else ""
        self.on_event(request.key, f"submitted job {job_id} ({self.launcher.name}){suffix}")

    def _follow(self, request: JobRequest, job_id: str) -> None:
        followers = self._by_job.setdefault(job_id, [])
        followers[:] = [r for r in followers if r.key != request.key] + [request]
        self.follower.add(job_id)

    # -- following ------------------------------------------------------------------------

    def _handle(self, event: JobEvent, outcomes: dict[str, JobOutcome]) -> None:
        if event.kind == "controller":
            self.on_event("", f"scheduler did not answer, retrying: {event.message}")
            return
        requests = self._by_job.get(event.job_id, [])
        if event.kind == "log" and requests:  # a shared job's log: once, under its first run
            for line in event.lines:
                self.on_log(requests[0].key, line)
            return
        for request in requests:
            self._handle_one(request, event, outcomes[request.key])

    def _handle_one(self, request: JobRequest, event: JobEvent, outcome: JobOutcome) -> None:
        if event.kind == "lost":
            self._fail(
                request,
                outcome,
                f"job {event.job_id} vanished from the scheduler ({event.message})",
            )
            return
        status = event.status
        assert status is not None
        previous = event.previous.value if event.previous else "?"
        where = f" on {status.node}" if status.node else ""
        self.on_event(
            request.key, f"job {status.job_id}: {previous} -> {status.state.value}{where}"
        )
        if status.log_path:
            outcome.log_path = status.log_path
        if status.state.is_final:
            self._ended(request, outcome, status)

    def _ended(self, request: JobRequest, outcome: JobOutcome, status: JobStatus) -> None:
        accounting = self._accounting(status.job_id)
        outcome.accounting = accounting
        last = outcome.attempts[-1]
        last = outcome.attempts[-1] = replace(last, state=status.state, reason=status.reason)
        state = status.state
        resubmits = sum(1 for a in outcome.attempts if a.state in STOPPED_STATES)
        taken_over = self.claims.lost(request)
        if taken_over and not (state is JobState.COMPLETED and request.is_done()):
            self._fail(
                request,
                outcome,
                f"job {status.job_id} ended {state.value}: "
                f"{request.key} was edited meanwhile: {taken_over}",
            )
        elif outcome.following and state is not JobState.COMPLETED:
            self._fail(
                request,
                outcome,
                f"job {status.job_id}, submitted by "
                f"{outcome.following}, ended {state.value} "
                f"({state.describe()}); that run decides what follows",
            )
        elif state is JobState.COMPLETED:
            if request.is_done():
                self._completed(request, outcome)
            else:
                self._fail(
                    request,
                    outcome,
                    f"job {status.job_id} COMPLETED but its outputs "
                    "are not all there (or not from the current "
                    "config)",
                )
        elif state in RESUBMIT_STATES and self._requeued_by_scheduler(status.job_id):
            self.on_event(
                request.key,
                f"job {status.job_id} ended {state.value} and the "
                "scheduler requeued it: following it again",
            )
            self.follower.follow_again(status.job_id)
        elif state in STOPPED_STATES and not request.force and request.is_done():
            # stopped after its last output was written whole (while exiting): nothing to redo
            self.on_event(
                request.key,
                f"job {status.job_id} ended {state.value} after writing all its outputs: "
                "adopted them, not resubmitting",
            )
            self._completed(request, outcome)
        elif state in STOPPED_STATES and (again := request.resubmission(state, last)):
            if resubmits > self.max_resubmits:
                self._fail(
                    request,
                    outcome,
                    f"job {status.job_id} ended {state.value}, and {request.key} was "
                    f"resubmitted {self.max_resubmits} time(s) already, the limit: not "
                    "resubmitting it again. Materialize it again to go on"
                    + (f" ({again.resumes})" if again.resumes else ""),
                )
                return
            why = f"job {status.job_id} ended {state.value}: " + (again.resumes or "started again")
            if again.time and again.time != last.time:
                why += f", with --time={again.time}"
            self.on_event(
                request.key,
                f"{why} ({state.describe()}); resubmission {resubmits}/{self.max_resubmits}",
            )
            self._resubmit(
                request,
                outcome,
                again.args,
                time_limit=again.time,
                why=why,
                resume=bool(again.resumes),
            )
        elif (
            state is JobState.OUT_OF_MEMORY
            and not outcome.oom_retried
            and (args := request.oom_retry_args()) is not None
        ):
            outcome.oom_retried = True
            self.on_event(
                request.key,
                f"job {status.job_id} ran out of memory: retrying once with {' '.join(args)}",
            )
            self._resubmit(
                request,
                outcome,
                args,
                why=f"job {status.job_id} ran out of memory: {' '.join(args)}",
            )
        else:
            self._fail(
                request, outcome, f"job {status.job_id} ended {state.value}: {state.describe()}"
            )

    def _requeued_by_scheduler(self, job_id: str) -> bool:
        """SLURM requeues batch jobs after a node failure or preemption unless told not to:
        look for a moment before resubmitting, so the run never ends up with two jobs."""
        for _ in range(self.requeue_checks):
            self.follower.sleep(self.requeue_wait)
            try:
                status = self.launcher.statuses([job_id]).get(job_id)
            except CkError:
                continue
            if status is not None and not status.state.is_final:
                return True
        return False

    def _resubmit(
        self,
        request: JobRequest,
        outcome: JobOutcome,
        args: Sequence[str],
        *,
        time_limit: str | None = None,
        why: str = "",
        resume: bool = False,
    ) -> None:
        try:
            self._submit(request, outcome, args, time_limit=time_limit, why=why, resume=resume)
        except CkError as exc:
            self._fail(request, outcome, f"resubmission refused: {exc}")

    def _accounting(self, job_id: str) -> JobAccounting | None:
        try:
            return self.launcher.accounting(job_id)
        except CkError:
            return None

    def _completed(self, request: JobRequest, outcome: JobOutcome) -> None:
        """``request``'s outputs are all in place: release its claim and report it done."""
        outcome.status = "completed"
        self._release(request)
        self.on_outcome(outcome)

    def _fail(self, request: JobRequest, outcome: JobOutcome, why: str) -> None:
        outcome.status = "failed"
        if outcome.log_path is None and outcome.job_id:
            outcome.log_path = self.launcher.log_path(outcome.job_id)
        outcome.log_tail = tail(outcome.log_path, 30)
        details = []
        if outcome.accounting:
            acc = outcome.accounting
            details.append(
                f"exit code {acc.exit_code}, elapsed {acc.elapsed_s} s, "
                f"node {acc.node or '-'}" + (f", reason {acc.reason}" if acc.reason else "")
            )
        if outcome.log_path:
            details.append(f"log: {outcome.log_path}")
        body = "\n".join(f"  {line}" for line in outcome.log_tail.splitlines())
        outcome.message = "\n".join(
            [f"{request.key}: {why}", *[f"  {d}" for d in details]]
            + ([f"  last lines of the log:\n{body}"] if body else [])
        )
        self.on_event(request.key, f"failed: {why}")
        self._release(request)
        self.on_outcome(outcome)

    def _release(self, request: JobRequest) -> None:
        if request.key in self._holding:
            self._holding.discard(request.key)
            self.slots.release(request.key)

    def _cancel_all(self) -> None:
        """Cancel the unfinished jobs this runner submitted or re-attached to (never those it
        only follows for another process)."""
        cancelled = []
        for job_id in self.follower.unfinished:
            if job_id in self._watching:
                continue
            try:
                self.launcher.cancel(job_id)
                cancelled.append(job_id)
            except CkError as exc:
                self.on_event("", f"could not cancel job {job_id}: {exc}")
        if cancelled:
            self.on_event("", f"interrupted: cancelled job(s) {', '.join(cancelled)}")
