"""`make bench`: run every benchmark in bench/, then print one table of figures and ratios.

Each benchmark prints its own report and, last, one JSON line with its figures; this script
shows the reports as they come and collects the JSON lines into the closing table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
#: (script, arguments): the v1 baseline of the config benchmark costs ~5 s a run, so 20 of its
#: 1000 runs are measured and scaled (it is a process per run: linear by construction).
BENCHMARKS = [
    ("bench_configs.py", ["--runs", "1000", "--baseline-runs", "20"]),
    ("bench_ui_partitions.py", ["--runs", "1000"]),
    ("bench_slurm_polling.py", []),
    # the baseline: the last commit that recorded every run of a step when its slowest job ended
    ("bench_materialization_delay.py", ["--baseline-ref", "33ce51b"]),
    ("bench_eval.py", []),
    ("bench_adapters.py", []),
    ("bench_hostile_input.py", []),
]


def run(script: str, args: list[str]) -> dict | None:
    """Run one benchmark, echoing its output; its JSON figures (None if it failed)."""
    print(f"\n===== {script} {' '.join(args)}", flush=True)
    process = subprocess.Popen(
        [sys.executable, str(BENCH / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    figures = None
    for line in process.stdout:
        print(line, end="", flush=True)
        if line.startswith('{"bench"'):
            figures = json.loads(line)
    return figures if process.wait() == 0 else None


def rows(figures: dict) -> list[tuple[str, str, str, str]]:
    """(benchmark, ck_dagster, baseline, ratio) rows for one benchmark's figures."""
    name = figures["bench"]
    if name == "configs":
        runs = figures["runs"]
        return [
            (
                f"{runs} run configs: register + one materialize vs v1 process per run",
                f"{figures['total_s']:.1f} s",
                f"{figures['v1_s']:.0f} s",
                f"{figures['ratio']:.1f}x faster",
            ),
            (
                "  register / materialize alone",
                f"{figures['register_s']:.1f} / {figures['materialize_s']:.1f} s",
                "-",
                "-",
            ),
            ("  register again, file unchanged", f"{figures['reregister_s']:.1f} s", "-", "-"),
            (
                "  peak RSS, register / materialize",
                f"{figures['register_rss_mb']:.0f} / {figures['materialize_rss_mb']:.0f} MB",
                "-",
                "-",
            ),
            (
                f"  Dagster storing one event (SQLite), x {figures['events']} in materialize",
                f"{figures['event_ms']:.1f} ms",
                "-",
                f"{figures['event_ms'] * figures['events'] / 1000:.0f} s in all",
            ),
            (
                "  the config work alone, in-process",
                f"{figures['config_work_s']:.2f} s",
                f"{figures['v1_s']:.0f} s",
                f"{figures['v1_s'] / figures['config_work_s']:.0f}x faster",
            ),
        ]
    if name == "ui_partitions":
        runs, small = figures["runs"], figures["baseline_runs"]
        return [
            (
                f"checkpoint partitions page in Chromium, {runs} runs (vs {small}), median",
                f"{figures['before_s']:.2f} s",
                f"{figures['before_baseline_s']:.2f} s",
                f"{figures['before_s'] / figures['before_baseline_s']:.1f}x",
            ),
            (
                "  the same once every run is trained",
                f"{figures['after_s']:.2f} s",
                f"{figures['after_baseline_s']:.2f} s",
                f"{figures['after_s'] / figures['after_baseline_s']:.1f}x",
            ),
            (
                "  first (cold) load, before / after training",
                f"{figures['before_cold_s']:.2f} / {figures['after_cold_s']:.2f} s",
                "-",
                "-",
            ),
        ]
    if name == "slurm_polling":
        return [
            (
                f"status calls/min following {figures['jobs']} jobs (vs dagster-slurm)",
                f"{figures['calls_per_min']:.1f}",
                f"{figures['baseline_calls_per_min']:.1f}",
                f"{figures['baseline_calls_per_min'] / figures['calls_per_min']:.1f}x fewer",
            ),
            (
                "  the same once jobs are >1 min old",
                f"{figures['steady_calls_per_min']:.1f}",
                f"{figures['baseline_steady_calls_per_min']:.1f}",
                f"{figures['baseline_steady_calls_per_min'] / figures['steady_calls_per_min']:.0f}"
                "x fewer",
            ),
            (
                "slurmctld RPCs/min (sdiag, by user)",
                f"{figures['rpcs_per_min']:.1f}",
                f"{figures['baseline_rpcs_per_min']:.1f}",
                f"{figures['baseline_rpcs_per_min'] / figures['rpcs_per_min']:.1f}x fewer",
            ),
            (
                "job end to follower noticing, mean/max",
                f"{figures['notice_delay_mean_s']:.1f}/{figures['notice_delay_max_s']:.1f} s",
                f"max {figures['baseline_notice_delay_max_s']:.1f} s",
                "-",
            ),
        ]
    if name == "materialization_delay":
        baseline = "baseline_checkpoint_s" in figures
        return [
            (
                f"quick run beside a slow one (slow job ends +{figures['slow_end_s']:.0f} s): "
                + label,
                f"+{figures[key]:.1f} s",
                f"+{figures['baseline_' + key]:.1f} s" if baseline else "-",
                f"{figures['baseline_' + key] - figures[key]:.1f} s sooner" if baseline else "-",
            )
            for label, key in (
                ("job end to checkpoint recorded", "checkpoint_s"),
                ("job end to eval job submitted", "eval_submitted_s"),
                ("job end to eval recorded", "eval_recorded_s"),
            )
        ]
    if name == "eval":
        return [
            (
                "eval throughput, samples/s (vs bare inspect eval hf/)",
                f"{figures['samples_per_s']:.1f}",
                f"{figures['baseline_samples_per_s']:.1f}",
                f"{figures['ratio']:.1f}x",
            )
        ]
    if name == "adapters":
        size = f"{figures['params_m']:.0f}M"
        grid = f"{figures['epochs']} epochs x {figures['runs']} LoRA runs"
        return [
            (
                f"MiB per saved LoRA epoch, adapter only vs merged ({size} model)",
                f"{figures['adapter_epoch_mib']:.1f}",
                f"{figures['merged_epoch_mib']:.1f}",
                f"{figures['merged_epoch_mib'] / figures['adapter_epoch_mib']:.0f}x smaller",
            ),
            (
                f"eval wall, {grid}: one job, one base load (eval_log when the pool has fewer "
                "slots than runs) vs one load per epoch",
                f"{figures['one_job_wall_s']:.1f} s",
                f"{figures['baseline_wall_s']:.1f} s",
                f"{figures['baseline_wall_s'] / figures['one_job_wall_s']:.1f}x faster",
            ),
            (
                "  one job per run, base loaded once per run (eval_log with a slot per run)",
                f"{figures['per_run_wall_s']:.1f} s",
                f"{figures['baseline_wall_s']:.1f} s",
                f"{figures['baseline_wall_s'] / figures['per_run_wall_s']:.1f}x faster",
            ),
        ]
    if name == "hostile_input":
        return [
            (
                "worst 1 MB experiment file: read time, peak memory",
                f"{figures['worst_s']:.2f} s, {figures['peak_mb']:.0f} MB",
                f"{figures['baseline_worst_s']:.0f} s",
                "-",
            )
        ]
    return []


def main() -> int:
    started = datetime.now(timezone.utc)
    load = os.getloadavg()[0]
    results = {script: run(script, args) for script, args in BENCHMARKS}
    table = [("benchmark", "ck_dagster", "baseline", "ratio")]
    for script, figures in results.items():
        table += rows(figures) if figures else [(script, "FAILED", "-", "-")]
    print(
        f"\n===== summary: `make bench` of {started:%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores, load {load:.1f} at the start"
    )
    print(markdown(table))
    return 0 if all(results.values()) else 1


def _cell(cell: str) -> str:
    """A sub-row's indent (two spaces) becomes a dash, which Markdown keeps."""
    return "– " + cell.strip() if cell.startswith("  ") else cell or "-"


def markdown(table: list[tuple[str, str, str, str]]) -> str:
    """The table as Markdown (the README's benchmark table is pasted from it)."""
    header, *body = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in body]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
