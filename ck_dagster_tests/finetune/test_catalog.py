"""The recipe catalog reads what `tune ls` lists and `tune cp` copies, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ck_dagster.finetune.catalog import TRAINING_RECIPES, recipe_catalog
from ck_dagster.finetune.config_checks import unknown_key_problems
from ck_dagster.finetune.torchtune_internals import keys_read_by
from ck_dagster_tests.fixtures.dagster import run_command

SAMPLE = ["llama3_2/1B_lora_single_device", "qwen2_5/7B_lora", "llama3_1/8B_full_single_device"]


def test_listing_matches_tune_ls() -> None:
    tune_ls = run_command(["tune", "ls"]).stdout
    assert [
        line.rstrip() for line in tune_ls.strip().splitlines()
    ] == recipe_catalog().listing().splitlines()


def test_loaded_configs_equal_what_tune_cp_writes(tmp_path: Path) -> None:
    catalog = recipe_catalog()
    for name in SAMPLE:
        target = tmp_path / (name.replace("/", "_") + ".yaml")
        run_command(["tune", "cp", name, target])
        copied = OmegaConf.to_container(OmegaConf.load(target), resolve=False)
        assert catalog.load(name) == copied, name


@pytest.mark.unit
def test_loaded_configs_are_copies() -> None:
    catalog = recipe_catalog()
    config = catalog.load(SAMPLE[0])
    config["epochs"] = 999
    assert catalog.load(SAMPLE[0])["epochs"] != 999


@pytest.mark.unit
def test_unknown_names_get_close_matches() -> None:
    catalog = recipe_catalog()
    with pytest.raises(KeyError) as refused:
        catalog.get("llama3_2/1B_lora_singledevice")
    assert "`llama3_2/1B_lora_single_device`" in refused.value.args[1]


@pytest.mark.unit
def test_unknown_key_check_knows_what_recipes_read() -> None:
    read = keys_read_by("lora_finetune_single_device")
    assert {"epochs", "batch_size", "optimizer", "save_adapter_weights_only"} <= read
    catalog = recipe_catalog()
    stock = [c for c in catalog.configs.values() if c.recipe in TRAINING_RECIPES]
    flagged = {c.name for c in stock if unknown_key_problems(c.file, c.recipe)}
    # torchtune's own qlora configs carry an `fsdp` key the distributed recipe never reads
    assert flagged and all("qlora" in name for name in flagged)
