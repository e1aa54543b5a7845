"""The checkpoint asset without SLURM: the same job script run by the local launcher, its
progress on the run's partition and in ``ck-dagster status`` while it trains."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from ck_dagster.assets.status import status_lines
from ck_dagster.definitions import defs
from ck_dagster.experiment.load import load_experiment
from ck_dagster.slurm.local import LocalLauncher
from ck_dagster_tests.fixtures.dagster import BIN, run_command
from ck_dagster_tests.fixtures.experiments import random_words, write_tiny_experiment


@pytest.mark.slow
def test_local_launcher_trains_and_shows_progress(dagster_home, tmp_path, tiny_model_dir) -> None:
    # steps slow enough that the job is seen running: two epochs of 40 steps on 100-letter
    # words take a few seconds (on the usual short words under a second: CI once missed them)
    file = write_tiny_experiment(
        tmp_path,
        tiny_model_dir,
        random_words(tmp_path / "words.json", rows=400, letters=100),
        runs="""
  - {name: lora8, type: fine-tuned, model: tiny-llama,
     parameters: {lora_rank: 8, max_steps_per_epoch: 40}}
  - {name: base, type: control, model: tiny-llama}
""",
    )
    run_command(["ck-dagster", "register", file])
    experiment = load_experiment(file)
    jobs = tmp_path / "jobs"
    env = {"CK_LAUNCHER": "local", "CK_LOCAL_JOBS_DIR": str(jobs)}
    with (tmp_path / "materialize.log").open("w+") as out:
        process = subprocess.Popen(
            [
                str(BIN / "dagster"),
                "asset",
                "materialize",
                "-m",
                "ck_dagster",
                "--select",
                "run_config,checkpoint",
                "--partition",
                "tiny/lora8",
            ],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen_running = []
        with DagsterInstance.get() as instance:
            while process.poll() is None:
                lines = status_lines(instance, defs, "tiny", LocalLauncher(jobs))
                seen_running += [line for line in lines if "RUNNING (epoch" in line]
                time.sleep(0.5)
        out.seek(0)
        log = out.read()
    assert process.returncode == 0, log
    # CK_LAUNCHER reaches the launcher resource as EnvVar, read by the run's process
    assert "launcher: local (launcher resource kind=local, from CK_LAUNCHER" in log
    assert "tiny/lora8: job 1: " in log and "-> COMPLETED" in log
    assert "tiny/lora8: epoch 1, step" in log and ", loss " in log  # progress from the job log
    assert list((experiment.run_dir("lora8") / "artifacts" / "epoch_1").glob("*.safetensors"))
    # while it trained, `status` showed the job running with its epoch, step and loss
    assert seen_running, "ck-dagster status never showed the job running with its progress"
    assert seen_running[-1].split()[:2] == ["lora8", "fresh"]
    assert "job 1 RUNNING (epoch " in seen_running[-1] and ", loss " in seen_running[-1]

    with DagsterInstance.get() as instance:
        record = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("checkpoint"), asset_partitions=["tiny/lora8"]),
            limit=1,
        )
        metadata = record.records[0].asset_materialization.metadata
        assert metadata["job_id"].value == "1" and metadata["epochs_saved"].value == 2
        # the progress seen while the job ran is on the run's partition (throttled)
        observed = instance.fetch_observations(
            AssetRecordsFilter(asset_key=AssetKey("checkpoint"), asset_partitions=["tiny/lora8"]),
            limit=50,
        )
        progress = [r.asset_observation.metadata for r in observed.records]
        assert progress and all(m["progress"].value.startswith("epoch ") for m in progress)
        assert {"epoch", "step", "loss", "updated"} <= set(progress[0])
        assert 1 <= progress[0]["epoch"].value <= 2 and progress[0]["loss"].value > 0

    # after it: the shell command, one line per run
    shown = run_command(["ck-dagster", "status", "tiny"], env=env).stdout.splitlines()
    assert shown[0].split() == ["run", "config", "training", "job", "epochs", "evals", "freshness"]
    lora8, base = (line.split(maxsplit=1)[1] for line in shown[1:])
    assert lora8.split() == ["fresh", "job", "1", "COMPLETED", "2/2", "-", "missing:", "eval_log"]
    assert base.split()[:2] == ["missing", "control"] and "missing: run_config, " in base
    refused = run_command(["ck-dagster", "status", "nope"], check=False)
    assert refused.returncode == 2 and "registered: tiny" in refused.stderr
    assert "Traceback" not in refused.stderr
