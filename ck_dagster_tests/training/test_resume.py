"""Where a stopped training job goes on: its last saved epoch, with torchtune's resume
overrides, and more time after a TIMEOUT as far as the cluster profile allows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ck_dagster.slurm.states import format_duration, parse_duration
from ck_dagster.training.artifacts import compare_configs
from ck_dagster.training.resume import RECIPE_STATE, resume_point, without_resume
from ck_dagster.training.submit import longer_time
from ck_dagster_tests.training.weights import write_weights

pytestmark = pytest.mark.unit


def saved(artifacts: Path, epoch: int, *files: str, at: float) -> None:
    """An epoch folder as torchtune leaves it, its files written at ``at``."""
    for name in files:
        path = write_weights(artifacts / f"epoch_{epoch}" / name)
        os.utime(path, (at, at))


def recipe_state(artifacts: Path, at: float) -> None:
    path = artifacts / RECIPE_STATE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (at, at))


def test_a_lora_run_resumes_from_its_last_epoch_adapter(tmp_path: Path) -> None:
    saved(tmp_path, 0, "adapter_model.pt", "model-00001-of-00001.safetensors", at=100)
    saved(tmp_path, 1, "adapter_weights/adapter_model.pt", "model.safetensors", at=200)
    recipe_state(tmp_path, at=201)
    point = resume_point(tmp_path, epochs=3)
    assert point is not None and point.epoch == 1
    assert point.overrides == (
        "resume_from_checkpoint=True",
        f"checkpointer.recipe_checkpoint={RECIPE_STATE}",
        "checkpointer.adapter_checkpoint=epoch_1/adapter_weights/adapter_model.pt",
    )
    assert point.describe() == "resumed from epoch_1, training on at epoch 2"


def test_a_full_run_resumes_from_its_last_epoch_weights(tmp_path: Path) -> None:
    saved(tmp_path, 0, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", at=1)
    (tmp_path / "epoch_0" / "model.safetensors.index.json").write_text("{}")
    os.utime(tmp_path / "epoch_0" / "model.safetensors.index.json", (1, 1))
    recipe_state(tmp_path, at=2)
    point = resume_point(tmp_path, epochs=2)
    assert point is not None and point.overrides[-1] == (
        "checkpointer.checkpoint_files=[epoch_0/model-00001-of-00002.safetensors,"
        "epoch_0/model-00002-of-00002.safetensors]"
    )


def test_nothing_to_resume_without_state_after_the_epoch_or_epochs_left(tmp_path: Path) -> None:
    assert resume_point(tmp_path, epochs=2) is None  # nothing saved
    saved(tmp_path, 0, "adapter_model.pt", at=100)
    assert resume_point(tmp_path, epochs=2) is None  # no recipe state
    recipe_state(tmp_path, at=99)
    assert resume_point(tmp_path, epochs=2) is None  # the state is from before epoch 0
    recipe_state(tmp_path, at=101)
    assert resume_point(tmp_path, epochs=1) is None  # the last epoch is saved: nothing left
    assert resume_point(tmp_path, epochs=2) is not None


def test_an_epoch_cut_short_while_saving_is_passed_over(tmp_path: Path) -> None:
    """Stopped while saving epoch 1: its weights are newer than the recipe state (epoch 0's)."""
    saved(tmp_path, 0, "adapter_model.pt", at=100)
    recipe_state(tmp_path, at=101)
    saved(tmp_path, 1, "model-00001-of-00001.safetensors", at=200)
    point = resume_point(tmp_path, epochs=3)
    assert point is not None and point.epoch == 0
    assert point.overrides[-1] == "checkpointer.adapter_checkpoint=epoch_0/adapter_model.pt"


def test_a_resume_keeps_an_out_of_memory_retrys_batch_and_replaces_an_older_resume() -> None:
    previous = ("batch_size=2", "resume_from_checkpoint=True", "checkpointer.adapter_checkpoint=a")
    assert without_resume(previous) == ("batch_size=2",)


def test_a_resumed_runs_config_is_the_runs_own() -> None:
    config = {"lr": 1e-3, "resume_from_checkpoint": False, "checkpointer": {"output_dir": "o"}}
    resumed = {
        "lr": 1e-3,
        "resume_from_checkpoint": True,
        "checkpointer": {"output_dir": "o", "adapter_checkpoint": "epoch_0/adapter_model.pt"},
    }
    assert compare_configs(resumed, config) == []
    assert compare_configs({**resumed, "lr": 1e-4}, config) == ["lr"]
    not_resumed = {**resumed, "resume_from_checkpoint": False}
    assert compare_configs(not_resumed, config) == ["checkpointer.adapter_checkpoint"]


def test_a_timed_out_job_gets_twice_its_time_up_to_the_profiles_max() -> None:
    assert longer_time("0:30:00", "1-00:00:00") == "1:00:00"
    assert longer_time("20:00:00", "1-00:00:00") == "1-00:00:00"
    assert longer_time("1", "3") == "0:02:00"
    assert longer_time("1:00:00", "1:00:00") is None  # no more allowed
    assert longer_time("1:00:00", None) is None  # no max_time in the profile
    assert format_duration(parse_duration("2-03:04:05") or 0) == "2-03:04:05"
