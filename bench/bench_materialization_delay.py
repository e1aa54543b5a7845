"""Benchmark: from a training job's end in SLURM to its checkpoint materialization in Dagster.

Trains the tiny model's runs through the local SLURM cluster with one
`dagster asset materialize`, then compares each job's end time (sacct) with the time the
checkpoint partition's materialization was recorded. The baseline a user would otherwise
have is noticing by hand; the figure to watch is how long Dagster lags the cluster.

Run: .venv/bin/python bench/bench_materialization_delay.py [--runs 3]   (needs the cluster)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ck_dagster.assets.instance import ensure_dagster_home  # noqa: E402
from ck_dagster.fileio import cache_dir, cached  # noqa: E402
from ck_dagster.slurm.client import SlurmLauncher  # noqa: E402
from ck_dagster.tiny import VERSION  # noqa: E402
from ck_dagster.tiny.data import make_capitalization_dataset  # noqa: E402
from ck_dagster.tiny.make import make_tiny_model  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    model = cached(cache_dir() / f"tiny-llama-{VERSION}", make_tiny_model)
    data = cached(cache_dir() / f"capitalization-{VERSION}.json", make_capitalization_dataset)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        name = f"delay{int(time.time())}"
        runs = "\n".join(
            f"  - {{name: r{i}, type: fine-tuned, model: tiny-llama, "
            f"parameters: {{lora_rank: {4 * (i + 1)}}}}}"
            for i in range(args.runs)
        )
        file = root / "exp.yaml"
        file.write_text(f"""experiment: {{name: {name}, dir: {root / "runs"}}}
controls: {{epochs: 1, lr: 3e-3, batch_size: 8, max_steps_per_epoch: 20,
           prompt: "Capitalize the given word: {{input}}\\n"}}
models: {{base: [{{name: tiny-llama, path: {model}}}]}}
data: {{training: {{path: {data}}}}}
runs:
{runs}
""")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(ensure_dagster_home(root / "home")),
            "CK_LAUNCHER": "slurm",
        }
        subprocess.run(
            [str(BIN / "ck-dagster"), "register", str(file)],
            env=env,
            check=True,
            capture_output=True,
        )
        keys = f"{name}/r0...{name}/r{args.runs - 1}"
        for selection in ("run_config", "checkpoint"):
            subprocess.run(
                [
                    str(BIN / "dagster"),
                    "asset",
                    "materialize",
                    "-m",
                    "ck_dagster",
                    "--select",
                    selection,
                    "--partition-range",
                    keys,
                ],
                env=env,
                check=True,
                capture_output=True,
            )
        recorded = json.loads(
            subprocess.run(
                [sys.executable, "-c", RECORDED, name, str(args.runs)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    launcher = SlurmLauncher()
    delays = []
    for run, timestamp in recorded.items():
        job = launcher.find(f"ck:{name}/{run}:train")[0]
        ended = dt.datetime.fromisoformat(launcher.accounting(job.job_id).end_time)
        delays.append(timestamp - ended.timestamp())
    print(
        f"{args.runs} training jobs followed by one process; job end (sacct, 1 s resolution)"
        f" to checkpoint materialization recorded in Dagster:"
    )
    print(
        f"  mean {statistics.mean(delays):.1f} s, max {max(delays):.1f} s, "
        f"all {[round(d, 1) for d in delays]}"
    )
    print(
        json.dumps(
            {
                "bench": "materialization_delay",
                "runs": args.runs,
                "delay_mean_s": round(statistics.mean(delays), 1),
                "delay_max_s": round(max(delays), 1),
            }
        )
    )


# the time Dagster recorded each run's checkpoint materialization
RECORDED = r"""
import json, sys
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
name, count = sys.argv[1], int(sys.argv[2])
instance = DagsterInstance.get()
out = {}
for i in range(count):
    record = instance.fetch_materializations(AssetRecordsFilter(
        asset_key=AssetKey("checkpoint"), asset_partitions=[f"{name}/r{i}"]), limit=1).records[0]
    out[f"r{i}"] = record.timestamp
print(json.dumps(out))
"""

if __name__ == "__main__":
    main()
