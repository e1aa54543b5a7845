"""The checkpoint asset without SLURM: the same job script run by the local launcher."""

from __future__ import annotations

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from ck_dagster.experiment.load import load_experiment
from ck_dagster_tests.fixtures.dagster import run_command
from ck_dagster_tests.fixtures.experiments import write_tiny_experiment


@pytest.mark.slow
def test_local_launcher_trains_and_logs_progress(dagster_home, tmp_path, tiny_model_dir,
                                                 capitalization_data) -> None:
    file = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data, runs="""
  - {name: lora8, type: fine-tuned, model: tiny-llama, parameters: {lora_rank: 8}}
""")
    run_command(["ck-dagster", "register", file])
    experiment = load_experiment(file)
    env = {"CK_LAUNCHER": "local", "CK_LOCAL_JOBS_DIR": str(tmp_path / "jobs")}
    result = run_command(["dagster", "asset", "materialize", "-m", "ck_dagster", "--select",
                          "run_config,checkpoint", "--partition", "tiny/lora8"], env=env,
                         timeout=600)
    log = result.stdout + result.stderr
    assert "launcher: local (CK_LAUNCHER=local)" in log
    assert "tiny/lora8: job 1: " in log and "-> COMPLETED" in log
    assert "tiny/lora8: epoch 1, step" in log and ", loss " in log  # progress from the job log
    assert list((experiment.run_dir("lora8") / "artifacts" / "epoch_1").glob("*.safetensors"))
    with DagsterInstance.get() as instance:
        record = instance.fetch_materializations(AssetRecordsFilter(
            asset_key=AssetKey("checkpoint"), asset_partitions=["tiny/lora8"]), limit=1)
        metadata = record.records[0].asset_materialization.metadata
        assert metadata["job_id"].value == "1" and metadata["epochs_saved"].value == 2
