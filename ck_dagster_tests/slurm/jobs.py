"""Tiny job scripts and a bounded "follow to the end" for the launcher tests."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from ck_dagster.slurm.follow import JobEvent, JobFollower
from ck_dagster.slurm.launcher import Launcher
from ck_dagster.slurm.states import JobStatus


def job_script(folder: Path, body: str, *sbatch: str, name: str = "job.sh") -> Path:
    """A bash batch script logging to ``logs/%x-%j.out`` with a small memory request."""
    header = ["--output=logs/%x-%j.out", "--mem=100M", *sbatch]
    lines = ["#!/bin/bash", *(f"#SBATCH {option}" for option in header), "", body]
    script = folder / name
    script.write_text("\n".join(lines) + "\n")
    return script


def unique_name(kind: str = "test") -> str:
    """A job name no other test run uses (the test cluster keeps jobs for a day)."""
    return f"ck:test-{uuid.uuid4().hex[:8]}/run:{kind}"


def follow(
    launcher: Launcher, *job_ids: str, limit_s: float = 60.0, poll: float = 0.2
) -> tuple[dict[str, JobStatus], list[JobEvent]]:
    """Follow jobs to their end (asserting that happens within ``limit_s``); final statuses
    and every event seen."""
    follower = JobFollower(launcher, poll_initial=poll, poll_max=1.0)
    follower.add(*job_ids)
    timer = threading.Timer(limit_s, follower.stop)
    timer.start()
    try:
        events = list(follower.events())
    finally:
        timer.cancel()
    assert not follower.unfinished, (
        f"jobs {follower.unfinished} still not ended after {limit_s}s: {follower.statuses}"
    )
    return follower.statuses, events


def wait_for_state(launcher: Launcher, job_id: str, state: str, limit_s: float = 30.0) -> None:
    """Follow until the job reaches ``state`` (by name), failing after ``limit_s``."""
    follower = JobFollower(launcher, poll_initial=0.2, poll_max=0.5, follow_logs=False)
    follower.add(job_id)
    timer = threading.Timer(limit_s, follower.stop)
    timer.start()
    try:
        for event in follower.events():
            if event.status is not None and event.status.state.value == state:
                return
    finally:
        timer.cancel()
        follower.stop()
    raise AssertionError(f"job {job_id} never reached {state}: {follower.statuses.get(job_id)}")
