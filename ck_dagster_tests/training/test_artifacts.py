"""Which saved checkpoints may be adopted: those trained with the run's current config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from ck_dagster.training.artifacts import (
    TRAINED_CONFIG,
    config_differences,
    epoch_checkpoints,
    is_complete,
    is_whole,
)
from ck_dagster_tests.training.weights import write_weights

pytestmark = pytest.mark.unit

CONFIG: dict[str, Any] = {
    "output_dir": "/runs/exp/lr/artifacts",
    "model": {"_component_": "torchtune.models.llama3_2.lora_llama3_2_1b", "lora_rank": 8},
    "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-4, "weight_decay": 0.01},
    "checkpointer": {"output_dir": "${output_dir}"},
    "batch_size": 4,
    "gradient_accumulation_steps": 8,
    "max_steps_per_epoch": None,
}


def trained_with(artifacts: Path, config: dict[str, Any]) -> None:
    """What torchtune's metric loggers write when a recipe starts (``save_config``)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), artifacts / TRAINED_CONFIG)


def test_the_same_config_has_no_differences(tmp_path: Path) -> None:
    trained_with(tmp_path, CONFIG)
    assert config_differences(tmp_path, CONFIG) == []


def test_every_changed_or_added_value_is_named(tmp_path: Path) -> None:
    trained_with(tmp_path, CONFIG)
    changed = copy.deepcopy(CONFIG)
    changed["optimizer"]["lr"] = 2e-4
    changed["model"]["lora_alpha"] = 16
    changed["max_steps_per_epoch"] = 10
    assert config_differences(tmp_path, changed) == [
        "model.lora_alpha",
        "optimizer.lr",
        "max_steps_per_epoch",
    ]


def test_an_out_of_memory_retry_counts_as_the_same_config(tmp_path: Path) -> None:
    retried = {**CONFIG, "batch_size": 2, "gradient_accumulation_steps": 16}
    trained_with(tmp_path, retried)
    assert config_differences(tmp_path, CONFIG) == []
    trained_with(tmp_path, {**CONFIG, "batch_size": 2})  # a smaller effective batch
    assert config_differences(tmp_path, CONFIG) == ["batch_size"]


def test_checkpoints_without_a_recorded_config_are_never_adopted(tmp_path: Path) -> None:
    assert config_differences(tmp_path, CONFIG) == [f"{TRAINED_CONFIG} missing"]
    (tmp_path / TRAINED_CONFIG).write_text("- not: a config\n")
    assert config_differences(tmp_path, CONFIG) == [f"{TRAINED_CONFIG} missing"]


def saved_epoch(artifacts: Path, epoch: int) -> Path:
    """An epoch folder as torchtune saves one: merged weights (safetensors) and the adapter
    (torch zip)."""
    folder = artifacts / f"epoch_{epoch}"
    write_weights(folder / "model.safetensors")
    write_weights(folder / "adapter_model.pt")
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize("name", ["model.safetensors", "adapter_model.pt"])
@pytest.mark.parametrize("kept", [0.0, 0.5, 0.99])
def test_an_epoch_with_a_weights_file_cut_short_is_not_a_checkpoint(
    tmp_path: Path, name: str, kept: float
) -> None:
    """A job stopped while saving leaves a file cut short: that epoch is neither adopted nor
    resumed from, however much of the file was written."""
    saved_epoch(tmp_path, 0)
    folder = saved_epoch(tmp_path, 1)
    assert is_complete(tmp_path, [0, 1]) and all(is_whole(p) for p in folder.iterdir())
    path = folder / name
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * kept)])
    assert not is_whole(path)
    assert [c.epoch for c in epoch_checkpoints(tmp_path) if c.has_weights] == [0]
    assert not is_complete(tmp_path, [0, 1]) and is_complete(tmp_path, [0])


def test_a_legacy_pickle_counts_as_whole(tmp_path: Path) -> None:
    """torch.save's old format has no end record to check: taken as written."""
    import torch

    path = tmp_path / "adapter_model.bin"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert is_whole(path)


@pytest.mark.parametrize(
    "lost", ["model-00002-of-00002.safetensors", "model.safetensors.index.json"]
)
def test_sharded_weights_need_every_shard_and_the_index(tmp_path: Path, lost: str) -> None:
    """torchtune writes a shard at a time, then the index: a job stopped between them left
    weights that cannot be loaded."""
    folder = tmp_path / "epoch_0"
    write_weights(folder / "model-00001-of-00002.safetensors")
    write_weights(folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text("{}")
    assert is_complete(tmp_path, [0])
    (folder / lost).unlink()
    [epoch] = epoch_checkpoints(tmp_path)
    assert epoch.missing_shards() == [lost] and not is_complete(tmp_path, [0])
