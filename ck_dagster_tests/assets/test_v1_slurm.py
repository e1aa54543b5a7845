"""A cruijff_kit v1 file, unedited but for its paths and checkpoint options, trained and
evaluated through real SLURM in one experiment: parquet data, validation loss, adapter-only
epochs with ``epochs_to_save``, outputs under ``output.base_directory``, W&B offline, metadata
from the file."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from ck_dagster.cli import main
from ck_dagster.evaluation.results import read_results
from ck_dagster.experiment.load import load_experiment
from ck_dagster_tests.assets.test_checkpoint import latest, materialize
from ck_dagster_tests.fixtures.experiments import write_parquet_data, write_v1_experiment

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TEST_ROWS = 12


def test_a_v1_file_with_parquet_data_trains_and_evaluates_on_slurm(
    dagster_home: Path,
    tmp_path: Path,
    tiny_model_dir: Path,
    capitalization_data: Path,
    slurm_cluster,
) -> None:
    data = write_parquet_data(capitalization_data, tmp_path / "words_parquet", test_rows=TEST_ROWS)
    name = f"v1_{uuid.uuid4().hex[:6]}"
    file = write_v1_experiment(
        tmp_path,
        tiny_model_dir,
        data,
        replace={
            'name: "v1_rank_sweep"': f'name: "{name}"',
            'format: "json"': 'format: "parquet"',
            "      test: 100": f"      test: {TEST_ROWS}",
            # the last epoch only: one evaluation is enough to show parity on parquet
            "      epochs: [0, 1]": "      epochs: [1]",
            # v1's checkpoint and validation options, in the same experiment
            "  validation_during_training: false": (
                "  validation_during_training: true\n"
                "  run_val_every_n_steps: 2\n"
                "  save_adapter_weights_only: true\n"
                '  epochs_to_save: "1"'
            ),
        },
    )
    assert main(["register", str(file)]) == 0
    experiment = load_experiment(file)
    run = "tiny-llama_rank4"
    key = experiment.partition_key(run)
    materialize("recipe_config,run_config,checkpoint,eval_log", [key])

    # configs stay in experiment.directory; training outputs go under base_directory
    run_dir = tmp_path / "ck-projects" / "v1_rank_sweep" / run
    outputs = tmp_path / "ck-outputs" / "v1_rank_sweep" / f"ck-out-{run}"
    assert (run_dir / "finetune.yaml").is_file() and (run_dir / "finetune.slurm").is_file()
    assert not (run_dir / "artifacts").exists()
    # epochs_to_save "1": epoch 0 was never written; epoch 1 holds the LoRA adapter only
    assert sorted(p.name for p in outputs.glob("epoch_*")) == ["epoch_1"]
    kept = {p.name for p in (outputs / "epoch_1").iterdir()}
    assert {"adapter_model.pt", "adapter_config.json"} <= kept
    assert not [n for n in kept if n.startswith("model")]  # no merged weights
    metadata = latest(key)
    # validation loss on the parquet validation split, every 2 steps, beside the training loss
    steps = [row.data["step"] for row in metadata["validation_curve"].records]
    assert steps and all(step % 2 == 0 for step in steps) and metadata["final_val_loss"] > 0
    assert metadata["artifacts"] == str(outputs)
    assert Path(metadata["job_log"]).parent == outputs
    assert metadata["dataset"] == "words_capitalization"  # data.training.label
    assert metadata["final_loss"] > 0  # the loss curve is read from base_directory too

    # output.wandb_project: an offline W&B run of this project, named after the run
    [offline] = (outputs / "wandb").glob("offline-run-*/run-*.wandb")
    record = offline.read_bytes()
    assert b"cruijff_kit_tests" in record and run.encode() in record

    # evaluated on the parquet test split, with the run's system prompt (prompt parity)
    results = read_results(run_dir)
    assert results is not None and results.ok
    [outcome] = results.evaluations  # epoch 1: the base model with its adapter applied
    assert (outcome.label, outcome.completed) == ("epoch_1", TEST_ROWS)
    spec = (run_dir / "eval" / "eval_spec.json").read_text()
    assert "You are a helpful assistant." in spec and str(data) in spec

    # informational fields are in the run_spec observation's metadata
    with DagsterInstance.get() as instance:
        [observation] = instance.fetch_observations(
            AssetRecordsFilter(asset_key=AssetKey("run_spec"), asset_partitions=[key]), limit=1
        ).records
        info = observation.asset_observation.metadata
    assert info["experiment.question"].value.startswith("Does LoRA rank change")
    assert info["model.size_gb"].value == 0.01
