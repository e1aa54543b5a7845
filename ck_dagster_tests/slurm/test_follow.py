"""JobFollower's pacing, outages and interruption, on a scripted launcher and a fake clock."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from ck_dagster.slurm.follow import ENDING_CALLS, JobFollower
from ck_dagster.slurm.launcher import ControllerUnavailable
from ck_dagster.slurm.script import exit_marker
from ck_dagster.slurm.states import JobState, JobStatus

pytestmark = pytest.mark.unit


class ScriptedLauncher:
    """A launcher whose jobs follow a timetable: (seconds, state) steps per job."""

    name = "scripted"

    def __init__(
        self,
        clock: FakeClock,
        timetable: dict[str, list[tuple[float, str]]],
        outage: tuple[float, float] = (-1.0, -1.0),
    ) -> None:
        self.clock, self.timetable, self.outage = clock, timetable, outage
        self.calls: Counter[str] = Counter()
        self.poll_times: list[float] = []
        self.cancelled: list[str] = []

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        self.calls["statuses"] += 1
        now = self.clock.now
        if self.outage[0] <= now < self.outage[1]:
            raise ControllerUnavailable("controller down")
        self.poll_times.append(now)
        out = {}
        for job_id in job_ids:
            state = [s for t, s in self.timetable[job_id] if t <= now][-1]
            out[job_id] = JobStatus(job_id, f"job-{job_id}", JobState(state))
        return out

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _follower(launcher: ScriptedLauncher, clock: FakeClock, **kwargs) -> JobFollower:
    return JobFollower(
        launcher,
        poll_initial=2.0,
        poll_max=60.0,
        backoff=2.0,
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )


def test_one_call_per_cycle_backoff_and_reset_on_change():
    clock = FakeClock()
    timetable = {str(i): [(0, "RUNNING"), (300 + i, "COMPLETED")] for i in range(50)}
    launcher = ScriptedLauncher(clock, timetable)
    follower = _follower(launcher, clock)
    follower.add(*timetable)
    events = list(follower.events())
    assert {s.state for s in follower.statuses.values()} == {JobState.COMPLETED}
    assert launcher.calls["statuses"] == len(launcher.poll_times)  # one call per cycle
    gaps = [b - a for a, b in zip(launcher.poll_times, launcher.poll_times[1:])]
    assert gaps[:6] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0]  # backs off while nothing changes
    assert max(gaps) == 60.0
    after_first_end = launcher.poll_times.index(next(t for t in launcher.poll_times if t >= 300))
    assert gaps[after_first_end] == 2.0  # a change brings the short interval back
    assert len([t for t in launcher.poll_times if t < 300]) == 9  # 5 minutes of nothing new
    assert sum(e.kind == "state" for e in events) == 100  # RUNNING then COMPLETED, each job


def test_keeps_following_through_a_controller_outage():
    clock = FakeClock()
    launcher = ScriptedLauncher(
        clock, {"1": [(0, "RUNNING"), (200, "COMPLETED")]}, outage=(10, 100)
    )
    follower = _follower(launcher, clock)
    follower.add("1")
    kinds = [e.kind for e in follower.events()]
    assert "controller" in kinds and kinds[-1] == "state"
    assert follower.statuses["1"].state is JobState.COMPLETED


def test_no_timeout_of_its_own():
    clock = FakeClock()
    week = 7 * 24 * 3600.0
    launcher = ScriptedLauncher(clock, {"1": [(0, "PENDING"), (week, "COMPLETED")]})
    follower = _follower(launcher, clock, follow_logs=False)
    follower.add("1")
    list(follower.events())
    assert follower.statuses["1"].state is JobState.COMPLETED and clock.now >= week


def test_a_job_the_scheduler_forgot_is_reported_lost():
    clock = FakeClock()
    launcher = ScriptedLauncher(clock, {"1": [(0, "UNKNOWN")]})
    follower = _follower(launcher, clock, lost_after=3)
    follower.add("1")
    events = list(follower.events())
    assert [e.kind for e in events] == ["lost"] and not follower.unfinished


def test_interrupt_in_a_sleep_cancels_unfinished_jobs():
    clock = FakeClock()
    launcher = ScriptedLauncher(clock, {"1": [(0, "RUNNING")], "2": [(0, "COMPLETED")]})

    def interrupted_sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    follower = JobFollower(launcher, clock=clock, sleep=interrupted_sleep)
    follower.add("1", "2")
    with pytest.raises(KeyboardInterrupt), follower:
        list(follower.events())
    assert launcher.cancelled == ["1"]


def test_an_error_in_the_callers_code_leaves_jobs_running():
    clock = FakeClock()
    launcher = ScriptedLauncher(clock, {"1": [(0, "RUNNING")]})
    follower = _follower(launcher, clock)
    follower.add("1")
    with pytest.raises(ValueError), follower:
        follower.wait(on_event=lambda event: int("not a number"))
    assert launcher.cancelled == []


def test_log_lines_are_streamed_whole(tmp_path):
    clock = FakeClock()
    log = tmp_path / "job.out"
    log.write_text("")
    launcher = ScriptedLauncher(clock, {"1": [(0, "RUNNING"), (10, "COMPLETED")]})
    original = launcher.statuses

    def with_log(job_ids: Sequence[str]) -> dict[str, JobStatus]:
        # the job writes a line and a half every poll, and ends without a newline
        with open(log, "a") as handle:
            handle.write(f"step {clock.now:g}\npart")
        return {
            j: JobStatus(j, s.name, s.state, log_path=Path(log))
            for j, s in original(job_ids).items()
        }

    launcher.statuses = with_log  # type: ignore[method-assign]
    follower = _follower(launcher, clock)
    follower.add("1")
    lines = [line for e in follower.events() if e.kind == "log" for line in e.lines]
    assert lines == ["step 0", "partstep 2", "partstep 6", "partstep 14", "part"]


def test_exit_marker_makes_the_end_seen_before_the_backed_off_status_call(tmp_path):
    """A job's exit marker (left by its script) is seen on the next log read, 2 s after the
    end, though the status calls have backed off to one a minute; each marker counts once."""
    clock = FakeClock()
    log = tmp_path / "slurm-1.out"
    launcher = ScriptedLauncher(clock, {"1": [(0, "RUNNING"), (100, "COMPLETED")]})
    launcher.statuses = _with_log(launcher.statuses, log)  # type: ignore[method-assign]

    def sleep(seconds: float) -> None:
        before = clock.now
        clock.sleep(seconds)
        if before < 100 <= clock.now:  # the script exits at t=100 and leaves its marker
            exit_marker(log, "1").write_text("0\n")

    follower = JobFollower(
        launcher, poll_initial=2.0, poll_max=60.0, backoff=2.0, clock=clock, sleep=sleep
    )
    follower.add("1")
    ended = [
        e.at
        for e in follower.events()
        if e.kind == "state" and e.status is not None and e.status.state is JobState.COMPLETED
    ]
    assert ended and launcher.poll_times[-1] <= 102
    # without the marker the call after t=62 would have come at t=122
    assert launcher.poll_times[:5] == [0, 2, 6, 14, 30]


@pytest.mark.parametrize("lag", [0, 4, 8])
def test_a_controller_that_shows_the_end_late_is_asked_again_soon(tmp_path, lag):
    """The marker is out at t=100 but SLURM shows the job running ``lag`` s longer (epilog,
    COMPLETING): the status calls stay 2 s apart until it shows the end."""
    clock = FakeClock()
    log = tmp_path / "slurm-1.out"
    launcher = ScriptedLauncher(clock, {"1": [(0, "RUNNING"), (100 + lag, "COMPLETED")]})
    launcher.statuses = _with_log(launcher.statuses, log)  # type: ignore[method-assign]

    def sleep(seconds: float) -> None:
        before = clock.now
        clock.sleep(seconds)
        if before < 100 <= clock.now:
            exit_marker(log, "1").write_text("0\n")

    follower = JobFollower(
        launcher, poll_initial=2.0, poll_max=3600.0, backoff=2.0, clock=clock, sleep=sleep
    )
    follower.add("1")
    list(follower.events())
    assert follower.statuses["1"].state is JobState.COMPLETED
    assert launcher.poll_times[-1] <= 102 + lag


def test_a_marker_seen_once_does_not_keep_the_status_calls_short(tmp_path):
    """A requeued job's old marker (the same job id) triggers a few quick calls (SLURM may lag
    a real end), then backoff resumes."""
    clock = FakeClock()
    log = tmp_path / "slurm-1.out"
    exit_marker(log, "1").write_text("0\n")
    launcher = ScriptedLauncher(clock, {"1": [(0, "PENDING"), (500, "COMPLETED")]})
    launcher.statuses = _with_log(launcher.statuses, log)  # type: ignore[method-assign]
    follower = JobFollower(
        launcher, poll_initial=2.0, poll_max=60.0, backoff=2.0, clock=clock, sleep=clock.sleep
    )
    follower.add("1")
    list(follower.events())
    gaps = [b - a for a, b in zip(launcher.poll_times, launcher.poll_times[1:])]
    assert max(gaps) == 60 and gaps.count(2.0) <= ENDING_CALLS + 1


def _with_log(statuses, log: Path):
    """Wrap a scripted ``statuses`` so every job reports ``log`` as its log file."""

    def wrapped(job_ids):
        return {j: dataclasses.replace(s, log_path=log) for j, s in statuses(job_ids).items()}

    return wrapped


def test_a_jobs_last_lines_come_before_its_end(tmp_path):
    """A job that ended before its log was first read: its lines (progress, say) are events
    before its end, in the order the job made them."""
    clock = FakeClock()
    log = tmp_path / "slurm-1.out"
    log.write_text("epoch 1 step 2\n")
    launcher = ScriptedLauncher(clock, {"1": [(0, "COMPLETED")]})
    launcher.statuses = _with_log(launcher.statuses, log)  # type: ignore[method-assign]
    follower = JobFollower(launcher, poll_initial=2.0, clock=clock, sleep=clock.sleep)
    follower.add("1")
    kinds = [e.kind for e in follower.events()]
    assert kinds == ["log", "state"]
