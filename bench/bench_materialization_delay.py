"""Benchmark: a quick run beside a slow one, from the quick training job's end to its checkpoint
recorded in Dagster and its evaluation job submitted.

Trains a sweep of a quick run (1 epoch of 10 steps) and a slow one (4 epochs of 400) on the
tiny model through the local SLURM cluster with one `dagster asset materialize --select
checkpoint,eval_log --partition-range`, then reads, for the quick run: its training job's end
and its evaluation job's submission (sacct, whole seconds), and when Dagster recorded its
checkpoint and its evaluation (the event log). The slow job's end is what the quick run waited
for before each run was recorded as its job ended. With ``--baseline-ref REF`` the same sweep
runs again with ck_dagster as it was at that git commit (``git archive``, first on the path),
and both are printed side by side.

Run: .venv/bin/python bench/bench_materialization_delay.py [--baseline-ref REF]  (needs the cluster)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ck_dagster.assets.instance import ensure_dagster_home  # noqa: E402
from ck_dagster.tiny import built_data, built_model  # noqa: E402

BIN = Path(sys.executable).parent
RUNS = """
  - {name: quick, type: fine-tuned, model: tiny-llama, parameters: {lora_rank: 8, epochs: 1}}
  - {name: slow, type: fine-tuned, model: tiny-llama,
     parameters: {lora_rank: 8, epochs: 4, batch_size: 1, max_steps_per_epoch: 400,
                  epochs_to_save: "3"}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline-ref", help="also run the sweep with ck_dagster at this git commit"
    )
    args = parser.parse_args()
    model = built_model()
    data = built_data()
    figures = {"bench": "materialization_delay", **sweep(model, data, code=None)}
    if args.baseline_ref:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", args.baseline_ref, "ck_dagster"],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            baseline = sweep(model, data, code=Path(tmp))
        figures.update({f"baseline_{k}": v for k, v in baseline.items()})
        figures["baseline_ref"] = args.baseline_ref
    print("quick run beside a slow one, seconds after the quick training job ended (sacct):")
    print(f"  {'':28}{'this code':>12}" + (f"{args.baseline_ref:>14}" if args.baseline_ref else ""))
    for label, key in (
        ("checkpoint recorded", "checkpoint_s"),
        ("evaluation job submitted", "eval_submitted_s"),
        ("evaluation recorded", "eval_recorded_s"),
        ("(the slow job ended)", "slow_end_s"),
    ):
        line = f"  {label:28}{figures[key]:>12.1f}"
        if args.baseline_ref:
            line += f"{figures['baseline_' + key]:>14.1f}"
        print(line)
    print(json.dumps(figures))


def sweep(model: Path, data: Path, code: Path | None) -> dict[str, float]:
    """Train and evaluate the quick/slow sweep with ck_dagster from ``code`` (None: this
    checkout); the quick run's figures, in seconds after its training job ended."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        name = f"delay{int(time.time())}"
        file = root / "exp.yaml"
        file.write_text(f"""experiment: {{name: {name}, dir: {root / "runs"}}}
controls: {{epochs: 2, lr: 1e-3, batch_size: 8, max_steps_per_epoch: 10,
           prompt: "Capitalize the given word: {{input}}\\n"}}
models: {{base: [{{name: tiny-llama, path: {model}}}]}}
data: {{training: {{path: {data}}}}}
runs:{RUNS}
evaluation: {{max_tokens: 12, tasks: [{{name: capitalization}}]}}
""")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(ensure_dagster_home(root / "home")),
            "CK_LAUNCHER": "slurm",
        }
        if code is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
        run = [str(BIN / "ck-dagster"), "register", str(file)]
        # from the sweep's folder: `dagster -m` puts the working directory first on the path
        subprocess.run(run, env=env, cwd=root, check=True, capture_output=True)
        keys = f"{name}/quick...{name}/slow"
        for selection in ("run_config", "checkpoint,eval_log"):
            subprocess.run(
                [str(BIN / "dagster"), "asset", "materialize", "-m", "ck_dagster"]
                + ["--select", selection, "--partition-range", keys],
                env=env,
                cwd=root,
                check=True,
                capture_output=True,
            )
        recorded = json.loads(
            subprocess.run(
                [sys.executable, "-c", RECORDED, f"{name}/quick"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    quick_end = sacct_time(f"ck:{name}/quick:train", "End")
    return {
        "checkpoint_s": round(recorded["checkpoint"] - quick_end, 1),
        "eval_submitted_s": round(sacct_time(f"ck:{name}/quick:eval", "Submit") - quick_end, 1),
        "eval_recorded_s": round(recorded["eval_log"] - quick_end, 1),
        "slow_end_s": round(sacct_time(f"ck:{name}/slow:train", "End") - quick_end, 1),
    }


def sacct_time(job_name: str, field: str) -> float:
    """``field`` (End, Submit) of the one job named ``job_name``, as a timestamp."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", f"--name={job_name}", "-S", "now-1days", "-o", field],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert len(out) == 1, f"{job_name}: {out}"
    return dt.datetime.fromisoformat(out[0]).timestamp()


# when Dagster first recorded the quick run's checkpoint and its evaluation
RECORDED = r"""
import json, sys
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
instance = DagsterInstance.get()
print(json.dumps({
    asset: instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[sys.argv[1]]),
        limit=1, ascending=True,
    ).records[0].timestamp
    for asset in ("checkpoint", "eval_log")
}))
"""

if __name__ == "__main__":
    main()
