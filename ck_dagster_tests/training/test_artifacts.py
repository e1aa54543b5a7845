"""Which saved checkpoints may be adopted: those trained with the run's current config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from ck_dagster.training.artifacts import TRAINED_CONFIG, config_differences

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
