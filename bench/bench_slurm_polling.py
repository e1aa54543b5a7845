"""How hard following jobs leans on slurmctld, and how soon a job's end is seen:
JobFollower versus dagster-slurm's polling policy.

Submits two identical sets of N job scripts (rendered by ck_dagster's JobScript, each a
``sleep`` of 120-210 s) at once, and follows them side by side:

- ours: JobFollower with its defaults (one ``squeue -j a,b,...`` per cycle, 2 s backing off
  to 30 s; the exit marker each script leaves makes a status call due at once), as root;
- baseline: dagster-slurm's policy, ``squeue -j ID`` per job, every 2 s backing off x1.5 to
  5 s, as its own Unix user, so slurmctld's per-user RPC counts (``sdiag``) tell the sides
  apart (root's count includes whatever else root asks the cluster meanwhile).

Reports control-plane calls per minute (each side's own counter and sdiag), calls per minute
between the first minute and the first job's end (the steady state of a long job), and how
long after each job's script ended each side noticed.

Needs the cluster up and root (to add the baseline's user): ``.venv/bin/python
bench/bench_slurm_polling.py [--jobs 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.follow import JobFollower
from ck_dagster.slurm.resources import Resources
from ck_dagster.slurm.script import JobScript

#: dagster-slurm's SlurmClient polling: first interval, growth per poll, ceiling (seconds).
BASELINE_POLICY = (2.0, 1.5, 5.0)
BASELINE_USER = "ck-bench-baseline"
_USER_RPC = re.compile(r"^\s*(\S+?)\s*\(\s*\d+\)\s+count:(\d+)", re.MULTILINE)


def sdiag_by_user() -> dict[str, int]:
    """slurmctld's RPC counts by user name."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    section = out.split("statistics by user", 1)[-1].split("Pending RPC", 1)[0]
    return {name: int(count) for name, count in _USER_RPC.findall(section)}


def ensure_user() -> None:
    """The system user the baseline runs as (created once)."""
    if subprocess.run(["id", BASELINE_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", BASELINE_USER], check=True)


def submit_set(launcher: SlurmLauncher, folder: Path, label: str, count: int) -> dict[str, str]:
    """``count`` JobScript jobs sleeping 120..210 s that write when they end; id -> end file."""
    folder.mkdir(parents=True)
    jobs = {}
    for i in range(count):
        seconds = 120 + 90 * i / max(1, count - 1)
        end_file = folder / f"end-{i}"
        name = f"bench:{label}-{i}"
        script = folder / f"job-{i}.slurm"
        script.write_text(
            JobScript(
                job_name=name,
                workdir=folder,
                log_path=folder / "slurm-%j.out",
                resources=Resources(mem="50M", cpus=1, gpus=0, time="0:10:00"),
                command=["bash", "-c", f"sleep {seconds:.1f}; date +%s.%N > {end_file}"],
            ).render()
        )
        jobs[launcher.submit(script, job_name=name)] = str(end_file)
    folder.chmod(0o755)
    return jobs


def follow_with_follower(job_ids: list[str]) -> tuple[dict[str, float], list[float]]:
    """JobFollower with its defaults; (job id -> when it saw the end, status call times)."""
    launcher = SlurmLauncher()
    noticed: dict[str, float] = {}
    calls: list[float] = []
    statuses = launcher.statuses

    def counted(ids):  # one status call = one squeue (sacct only for jobs squeue forgot)
        calls.append(time.time())
        return statuses(ids)

    launcher.statuses = counted  # type: ignore[method-assign]
    follower = JobFollower(launcher, follow_logs=False)
    follower.add(*job_ids)
    for event in follower.events():
        if event.kind == "state" and event.status and event.status.state.is_final:
            noticed[event.job_id] = event.at
    return noticed, calls


#: dagster-slurm's policy as a shell loop, so it can run as its own user (this machine's Python
#: lives where other users cannot run it). Prints "call TIME" and "noticed ID TIME" lines.
BASELINE_SCRIPT = r"""
first_ms=$1 growth_pct=$2 ceiling_ms=$3; shift 3
declare -A due interval
now_ms() { date +%s%3N; }
for id in "$@"; do due[$id]=$(now_ms); interval[$id]=$first_ms; done
left=$#
while [ "$left" -gt 0 ]; do
  for id in "${!due[@]}"; do
    [ "$(now_ms)" -ge "${due[$id]}" ] || continue
    echo "call $(date +%s.%N)"
    state=$(squeue -h -j "$id" -o %T 2>/dev/null)
    case "$state" in
      ""|COMPLETED|FAILED|CANCELLED*|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE)
        echo "noticed $id $(date +%s.%N)"; unset "due[$id]"; left=$((left - 1)); continue;;
    esac
    due[$id]=$(( $(now_ms) + ${interval[$id]} ))
    next=$(( ${interval[$id]} * growth_pct / 100 ))
    interval[$id]=$(( next < ceiling_ms ? next : ceiling_ms ))
  done
  sleep 0.1
done
"""


def follow_like_dagster_slurm(job_ids: list[str]) -> tuple[dict[str, float], list[float]]:
    """dagster-slurm's policy, as the baseline user: per job, ``squeue -j ID`` at 2 s growing
    x1.5 up to 5 s."""
    first, growth, ceiling = BASELINE_POLICY
    out = subprocess.run(
        [
            "runuser",
            "-u",
            BASELINE_USER,
            "--",
            "bash",
            "-c",
            BASELINE_SCRIPT,
            "baseline",
            str(int(first * 1000)),
            str(int(growth * 100)),
            str(int(ceiling * 1000)),
            *job_ids,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout
    noticed, calls = {}, []
    for line in out.splitlines():
        kind, *fields = line.split()
        if kind == "call":
            calls.append(float(fields[0]))
        elif kind == "noticed":
            noticed[fields[0]] = float(fields[1])
    return noticed, calls


def summarize(
    jobs: dict[str, str], result: dict, started: float, steady_after: float
) -> dict[str, float]:
    """Calls per minute overall and in the steady window, and end-to-notice delays."""
    calls, noticed = result["calls"], result["noticed"]
    ended = max(noticed.values())
    minutes = (ended - started) / 60
    steady = [t for t in calls if steady_after <= t < min(noticed.values())]
    steady_minutes = max(1e-9, (min(noticed.values()) - steady_after) / 60)
    delays = [noticed[j] - float(Path(path).read_text()) for j, path in jobs.items()]
    return {
        "calls": len(calls),
        "calls_per_min": len(calls) / minutes,
        "steady_calls_per_min": len(steady) / steady_minutes,
        "delay_mean_s": statistics.mean(delays),
        "delay_max_s": max(delays),
        "minutes": minutes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs per side (default 20)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_slurm_polling needs root: the baseline runs as its own user for sdiag")
    ensure_user()
    folder = Path(tempfile.mkdtemp(prefix="bench-slurm-polling-"))
    folder.chmod(0o755)
    launcher = SlurmLauncher()
    sets = {
        side: submit_set(launcher, folder / side, side, args.jobs)
        for side in ("follower", "baseline")
    }
    before = sdiag_by_user()
    started = time.time()
    baseline: dict = {}
    thread = threading.Thread(
        target=lambda: baseline.update(
            zip(("noticed", "calls"), follow_like_dagster_slurm(list(sets["baseline"])))
        )
    )
    thread.start()
    ours_noticed, ours_calls = follow_with_follower(list(sets["follower"]))
    thread.join()
    after = sdiag_by_user()
    rpcs = {
        "follower": after.get("root", 0) - before.get("root", 0),
        "baseline": after.get(BASELINE_USER, 0) - before.get(BASELINE_USER, 0),
    }
    figures = {
        "follower": summarize(
            sets["follower"], {"noticed": ours_noticed, "calls": ours_calls}, started, started + 60
        ),
        "baseline": summarize(sets["baseline"], baseline, started, started + 60),
    }
    ours, theirs = figures["follower"], figures["baseline"]
    rows = [
        ("status calls", ours["calls"], theirs["calls"]),
        ("status calls / min", ours["calls_per_min"], theirs["calls_per_min"]),
        (
            "status calls / min, jobs >1 min old",
            ours["steady_calls_per_min"],
            theirs["steady_calls_per_min"],
        ),
        ("slurmctld RPCs (sdiag, by user)", rpcs["follower"], rpcs["baseline"]),
        (
            "slurmctld RPCs / min (sdiag)",
            rpcs["follower"] / ours["minutes"],
            rpcs["baseline"] / theirs["minutes"],
        ),
    ]
    first, growth, ceiling = BASELINE_POLICY
    print(
        f"{args.jobs} jobs per side, sleeping 120-210 s; baseline: squeue -j ID per job, "
        f"{first:g} s x{growth:g} up to {ceiling:g} s (dagster-slurm)"
    )
    print(f"{'':38} {'JobFollower':>12} {'dagster-slurm':>14}   comparison")
    for label, mine, base in rows:
        ratio = f"{base / mine:.1f}x fewer" if mine else "-"
        print(f"{label:38} {mine:12.1f} {base:14.1f}   {ratio}")
    for label, key in (
        ("end-to-notice delay mean (s)", "delay_mean_s"),
        ("end-to-notice delay max (s)", "delay_max_s"),
    ):
        print(
            f"{label:38} {ours[key]:12.1f} {theirs[key]:14.1f}   {ours[key] - theirs[key]:+.1f} s"
        )
    print(
        json.dumps(
            {
                "bench": "slurm_polling",
                "jobs": args.jobs,
                "calls_per_min": round(ours["calls_per_min"], 1),
                "baseline_calls_per_min": round(theirs["calls_per_min"], 1),
                "steady_calls_per_min": round(ours["steady_calls_per_min"], 2),
                "baseline_steady_calls_per_min": round(theirs["steady_calls_per_min"], 1),
                "rpcs_per_min": round(rpcs["follower"] / ours["minutes"], 1),
                "baseline_rpcs_per_min": round(rpcs["baseline"] / theirs["minutes"], 1),
                "notice_delay_mean_s": round(ours["delay_mean_s"], 1),
                "notice_delay_max_s": round(ours["delay_max_s"], 1),
                "baseline_notice_delay_max_s": round(theirs["delay_max_s"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
