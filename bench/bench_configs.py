"""Benchmark: N run configs through ck_dagster vs the v1 way, side by side in one run.

ck_dagster: `ck-dagster register` (which validates every run) + one `dagster asset
materialize --partition-range` that writes every run's finetune.yaml/finetune.slurm on a fresh
SQLite Dagster home; then registering the unchanged file again. The ratio to v1 counts both
commands. Peak RSS is each command's own (its process and children).

Baseline (v1, re-created here only): one process per run that runs `tune cp <recipe>` to get
the recipe config, merges the run's parameters into it and writes the two files, the way
`setup_finetune.py` was run once per run from a shell loop.

Run: .venv/bin/python bench/bench_configs.py [--runs 100] [--baseline-runs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ck_dagster.assets.instance import ensure_dagster_home

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPE = "llama3_2/1B_lora_single_device"

# The v1 per-run process: tune cp, merge, write. Parameters arrive as JSON on argv.
V1_SETUP = r"""
import json, subprocess, sys, yaml
from pathlib import Path
recipe, run_dir, params = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
run_dir.mkdir(parents=True, exist_ok=True)
subprocess.run(["tune", "cp", recipe, str(run_dir / "recipe.yaml")], check=True,
               capture_output=True)
config = yaml.safe_load((run_dir / "recipe.yaml").read_text())
config["output_dir"] = str(run_dir / "artifacts")
config["model"]["lora_rank"] = params["lora_rank"]
config["model"]["lora_alpha"] = 2 * params["lora_rank"]
config["optimizer"]["lr"] = params["lr"]
config["epochs"] = 2
(run_dir / "finetune.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
(run_dir / "finetune.slurm").write_text(
    "#!/bin/bash\n#SBATCH --mem=40G\n#SBATCH --gres=gpu:1\n"
    "tune run lora_finetune_single_device --config finetune.yaml\n")
"""


def run_parameters(count: int) -> list[dict[str, float]]:
    ranks, rates = [4, 8, 16, 32, 64], [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
    return [{"lora_rank": ranks[i % 5], "lr": rates[(i // 5) % 5]} for i in range(count)]


def run_name(index: int, count: int) -> str:
    """``run007`` (3 digits, 4 from 1000 runs on)."""
    return f"run{index:0{max(3, len(str(count - 1)))}d}"


def experiment_yaml(root: Path, count: int) -> Path:
    data = REPO / "examples" / "data" / "words_capitalization.json"
    runs = "\n".join(
        f"  - name: {run_name(i, count)}\n    type: fine-tuned\n    model: Llama-3.2-1B-Instruct\n"
        f"    parameters: {{lora_rank: {p['lora_rank']}, lr: {p['lr']}}}"
        for i, p in enumerate(run_parameters(count))
    )
    file = root / "bench_sweep.yaml"
    file.write_text(f"""experiment: {{name: bench_sweep, dir: {root / "runs"}}}
controls: {{base_recipe: {RECIPE}, epochs: 2, prompt: "{{input}}\\n"}}
models: {{base: [{{name: Llama-3.2-1B-Instruct, path: /models/Llama-3.2-1B-Instruct}}]}}
data: {{training: {{path: {data}}}}}
runs:
{runs}
""")
    return file


# Runs a command and prints its peak RSS (KiB, Linux): the largest of its process tree's.
PEAK_RSS = r"""
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(done.stdout + done.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one command."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *command], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds, int(done.stdout.split()[-1]) / 1024


def bench_ck_dagster(root: Path, count: int) -> dict[str, float]:
    home = ensure_dagster_home(root / "dagster_home")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    file = experiment_yaml(root, count)
    register, register_rss = timed([str(BIN / "ck-dagster"), "register", str(file)], env)
    materialize, materialize_rss = timed(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "ck_dagster",
            "--select",
            "recipe_config,run_config",
            "--partition-range",
            f"bench_sweep/{run_name(0, count)}...bench_sweep/{run_name(count - 1, count)}",
        ],
        env,
    )
    reregister, _ = timed([str(BIN / "ck-dagster"), "register", str(file)], env)
    written = len(list((root / "runs").glob("*/finetune.yaml")))
    assert written == count, f"{written} of {count} configs written"
    events = subprocess.run(
        [sys.executable, "-c", COUNT_EVENTS], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    return {
        "register_s": register,
        "materialize_s": materialize,
        "reregister_s": reregister,
        "register_rss_mb": register_rss,
        "materialize_rss_mb": materialize_rss,
        "events": int(events[0]),
        "steps_s": float(events[1]),
        "imports_s": timed([sys.executable, "-c", "import ck_dagster.definitions"], env)[0],
        "config_work_s": config_work(file, root / "in_process"),
        "event_ms": event_write_ms(root / "event_probe"),
    }


# Dagster's own account of the run: events stored, and seconds spent inside the steps.
COUNT_EVENTS = r"""
from dagster import DagsterInstance
instance = DagsterInstance.get()
run = instance.get_runs(limit=1)[0]
logs = instance.all_logs(run.run_id)
steps = [e for e in logs if e.dagster_event]
starts = [e.timestamp for e in steps if e.dagster_event_type.value == "STEP_START"]
ends = [e.timestamp for e in steps if e.dagster_event_type.value == "STEP_SUCCESS"]
print(len(logs), max(ends) - min(starts))
"""


# Dagster's own cost of storing one event on this disk: runless observations, one call each
# (the public API), in a fresh SQLite home. Prints milliseconds per event.
EVENT_COST = r"""
import sys, time
from dagster import AssetObservation, DagsterInstance
instance = DagsterInstance.get()
count = int(sys.argv[1])
start = time.perf_counter()
for i in range(count):
    instance.report_runless_asset_event(AssetObservation("probe", partition=f"p{i}"))
print((time.perf_counter() - start) / count * 1000)
"""


def event_write_ms(root: Path, count: int = 200) -> float:
    """Milliseconds Dagster takes to store one event, one at a time, in a fresh SQLite home."""
    env = {**os.environ, "DAGSTER_HOME": str(ensure_dagster_home(root))}
    done = subprocess.run(
        [sys.executable, "-c", EVENT_COST, str(count)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.split()[-1])


def config_work(file: Path, out: Path) -> float:
    """The config work alone, in-process: load, merge, validate and write every run."""
    from ck_dagster.experiment.load import load_experiment
    from ck_dagster.fileio import atomic_write_text
    from ck_dagster.finetune.plan import plan_experiment

    plan_experiment(load_experiment(file))  # imports and caches warm, as in a running process
    start = time.perf_counter()
    for name, run in plan_experiment(load_experiment(file)).runs.items():
        atomic_write_text(out / name / "finetune.yaml", run.finetune_yaml or "")
        atomic_write_text(out / name / "finetune.slurm", run.slurm_script or "")
    return time.perf_counter() - start


def bench_v1(root: Path, count: int) -> float:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    start = time.perf_counter()
    for i, params in enumerate(run_parameters(count)):
        subprocess.run(
            [sys.executable, "-c", V1_SETUP, RECIPE, str(root / f"run{i:03d}"), json.dumps(params)],
            check=True,
            env=env,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument(
        "--baseline-runs",
        type=int,
        default=100,
        help="runs for the v1 baseline (it costs ~5 s each)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ck").mkdir()
        ours = bench_ck_dagster(Path(tmp) / "ck", args.runs)
        v1 = bench_v1(Path(tmp) / "v1", args.baseline_runs)
    v1_total = v1 * args.runs / args.baseline_runs
    ours["total_s"] = ours["register_s"] + ours["materialize_s"]
    ratio = v1_total / ours["total_s"]
    scaled = (
        "" if args.baseline_runs == args.runs else f" ({args.baseline_runs} runs measured, scaled)"
    )
    print(f"configs for {args.runs} runs (base recipe {RECIPE}), one process each way")
    print(
        f"  ck_dagster register                     {ours['register_s']:8.2f} s  "
        f"(peak RSS {ours['register_rss_mb']:.0f} MB)"
    )
    print(
        f"  ck_dagster materialize, one call        {ours['materialize_s']:8.2f} s  "
        f"(peak RSS {ours['materialize_rss_mb']:.0f} MB)"
    )
    print(f"  register + materialize                  {ours['total_s']:8.2f} s")
    print(f"  register again, file unchanged          {ours['reregister_s']:8.2f} s")
    print(f"    process start + imports               {ours['imports_s']:8.2f} s")
    print(
        f"    inside the steps (Dagster's clock)    {ours['steps_s']:8.2f} s  "
        f"({ours['events']} events stored)"
    )
    print(f"    the config work itself, in-process    {ours['config_work_s']:8.2f} s")
    print(
        f"    Dagster storing one event here        {ours['event_ms']:8.1f} ms "
        f"(x {ours['events']} events = {ours['event_ms'] * ours['events'] / 1000:.1f} s)"
    )
    print(f"  v1: a process per run running tune cp   {v1_total:8.2f} s{scaled}")
    print(f"  speed-up, v1 / (register + materialize) {ratio:8.1f}x")
    print(f"  speed-up, v1 / config work              {v1_total / ours['config_work_s']:8.1f}x")
    print(
        json.dumps(
            {
                "bench": "configs",
                "runs": args.runs,
                **{k: round(v, 2) for k, v in ours.items()},
                "v1_s": round(v1_total, 2),
                "ratio": round(ratio, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
