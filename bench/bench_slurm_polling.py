"""How hard following jobs leans on slurmctld: JobFollower versus one squeue per job.

Submits two identical sets of N jobs (each a ``sleep`` of 30-60 s) at once. One process
follows the first set with JobFollower (one ``squeue -j a,b,...`` per cycle, backing off while
nothing changes); a thread follows the second set the way a user would by hand: ``squeue -j ID``
for every job every 2 s. Reports control-plane calls per minute from each side's own counter
and from ``sdiag`` (slurmctld's RPC counts: a multi-job squeue is REQUEST_JOB_INFO, a one-job
squeue REQUEST_JOB_INFO_SINGLE, so the two sides can be told apart in one run), and how long
after each job's script ended each side noticed.

Needs the cluster up (scripts/local-slurm/start.sh). Run: ``.venv/bin/python
bench/bench_slurm_polling.py [--jobs 20]``. Other users of the cluster add to the sdiag counts.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.follow import JobFollower
from ck_dagster.slurm.states import JobState

BASELINE_INTERVAL_S = 2.0
_RPC = re.compile(r"^\s*(REQUEST_\w+)\s+\(\s*\d+\)\s+count:(\d+)", re.MULTILINE)


def sdiag_counts() -> dict[str, int]:
    """slurmctld's RPC counts by message type."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    return {name: int(count) for name, count in _RPC.findall(out)}


def submit_set(launcher: SlurmLauncher, folder: Path, label: str, count: int) -> dict[str, Path]:
    """``count`` jobs sleeping 30..60 s that write the time they end; id -> end-time file."""
    folder.mkdir(parents=True)
    jobs = {}
    for i in range(count):
        seconds = 30 + 30 * i / max(1, count - 1)
        end_file = folder / f"end-{i}"
        script = folder / f"job-{i}.sh"
        script.write_text("#!/bin/bash\n#SBATCH --output=%j.out\n#SBATCH --mem=50M\n"
                          f"sleep {seconds:.1f}\ndate +%s.%N > {end_file}\n")
        jobs[launcher.submit(script, job_name=f"bench:{label}-{i}")] = end_file
    return jobs


def follow_with_follower(launcher: SlurmLauncher, jobs: dict[str, Path]) -> dict[str, float]:
    """JobFollower with its defaults; job id -> when it saw the job end."""
    noticed = {}
    follower = JobFollower(launcher, follow_logs=False)
    follower.add(*jobs)
    for event in follower.events():
        if event.kind == "state" and event.status and event.status.state.is_final:
            noticed[event.job_id] = event.at
    return noticed


def follow_by_hand(jobs: dict[str, Path], calls: list[int]) -> dict[str, float]:
    """What a user's script does: ``squeue -j ID`` for each job every 2 s until it ends."""
    noticed: dict[str, float] = {}
    while len(noticed) < len(jobs):
        cycle = time.monotonic()
        for job_id in jobs:
            if job_id in noticed:
                continue
            calls[0] += 1
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                                 capture_output=True, text=True).stdout.strip()
            if not out or JobState.parse(out).is_final:
                noticed[job_id] = time.time()
        time.sleep(max(0.0, BASELINE_INTERVAL_S - (time.monotonic() - cycle)))
    return noticed


def delays(jobs: dict[str, Path], noticed: dict[str, float]) -> list[float]:
    """Seconds from each script's last line to the follower noticing the job's end."""
    return [noticed[j] - float(path.read_text()) for j, path in jobs.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs per side (default 20)")
    count = parser.parse_args().jobs

    folder = Path(tempfile.mkdtemp(prefix="bench-slurm-polling-"))
    launcher = SlurmLauncher()
    ours = submit_set(launcher, folder / "follower", "follower", count)
    theirs = submit_set(launcher, folder / "baseline", "baseline", count)
    launcher.calls.clear()
    before = sdiag_counts()
    started = time.monotonic()

    baseline_calls = [0]
    baseline_noticed: dict[str, float] = {}
    baseline = threading.Thread(
        target=lambda: baseline_noticed.update(follow_by_hand(theirs, baseline_calls)))
    baseline.start()
    follower_noticed = follow_with_follower(launcher, ours)
    follower_minutes = (time.monotonic() - started) / 60
    baseline.join()
    baseline_minutes = (time.monotonic() - started) / 60
    after = sdiag_counts()

    rpc = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    follower_rpc = rpc.get("REQUEST_JOB_INFO", 0)
    baseline_rpc = rpc.get("REQUEST_JOB_INFO_SINGLE", 0)
    follower_calls = launcher.calls["squeue"] + launcher.calls["sacct"]
    ours_delay, theirs_delay = delays(ours, follower_noticed), delays(theirs, baseline_noticed)

    calls = [
        ("status calls (client counter)", follower_calls, baseline_calls[0]),
        ("status calls / min (client)", follower_calls / follower_minutes,
         baseline_calls[0] / baseline_minutes),
        ("slurmctld RPCs (sdiag)", follower_rpc, baseline_rpc),
        ("slurmctld RPCs / min (sdiag)", follower_rpc / follower_minutes,
         baseline_rpc / baseline_minutes),
    ]
    latency = [
        ("end-to-notice delay mean (s)", statistics.mean(ours_delay),
         statistics.mean(theirs_delay)),
        ("end-to-notice delay max (s)", max(ours_delay), max(theirs_delay)),
    ]
    print(f"{count} jobs per side, sleeping 30-60 s, followed for {follower_minutes:.2f} min "
          f"(JobFollower) / {baseline_minutes:.2f} min (squeue -j ID every "
          f"{BASELINE_INTERVAL_S:g} s)")
    print(f"{'':32} {'JobFollower':>12} {'per-job squeue':>15}   comparison")
    for label, mine, base in calls:
        ratio = f"{base / mine:.1f}x fewer" if mine else "-"
        print(f"{label:32} {mine:12.1f} {base:15.1f}   {ratio}")
    for label, mine, base in latency:
        print(f"{label:32} {mine:12.1f} {base:15.1f}   {mine - base:+.1f} s")
    print(f"follower calls by command: {dict(launcher.calls)}. sdiag attributes by RPC type: a "
          "squeue for one job (the follower's last cycles too) is REQUEST_JOB_INFO_SINGLE, and "
          "any other squeue on the cluster in this window counts too.")
    print(json.dumps({"bench": "slurm_polling", "jobs": count,
                      "calls_per_min": round(calls[1][1], 1),
                      "baseline_calls_per_min": round(calls[1][2], 1),
                      "rpcs_per_min": round(calls[3][1], 1),
                      "baseline_rpcs_per_min": round(calls[3][2], 1),
                      "notice_delay_mean_s": round(latency[0][1], 1),
                      "notice_delay_max_s": round(latency[1][1], 1)}))

if __name__ == "__main__":
    main()
