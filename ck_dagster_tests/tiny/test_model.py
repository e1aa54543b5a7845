"""The tiny model folder: what torchtune builds is what transformers loads, built safely."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torchtune.models.convert_weights import hf_to_tune
from torchtune.models.llama3_2 import lora_llama3_2_1b
from transformers import AutoModelForCausalLM

import ck_dagster.tiny.make as make
from ck_dagster.tiny.model import DIMS, HEAD_DIM, lora_tiny_llama, tiny_llama
from ck_dagster_tests.tiny.tune import greedy_answers

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "original/tokenizer.model",
}


def _tune_state(model_dir: Path) -> dict[str, torch.Tensor]:
    return hf_to_tune(
        load_file(model_dir / "model.safetensors"),
        num_heads=DIMS["num_heads"],
        num_kv_heads=DIMS["num_kv_heads"],
        dim=DIMS["embed_dim"],
        head_dim=HEAD_DIM,
    )


@pytest.mark.unit
def test_lora_builder_takes_the_arguments_of_lora_llama3_2_1b() -> None:
    theirs = dict(inspect.signature(lora_llama3_2_1b).parameters)
    del theirs["tie_word_embeddings"]  # the tiny checkpoint is tied: untying cannot load it
    ours = inspect.signature(lora_tiny_llama).parameters
    assert [(p.name, p.default) for p in ours.values()] == [
        (p.name, p.default) for p in theirs.values()
    ]


def test_model_folder_holds_the_hf_files(tiny_model_dir: Path) -> None:
    assert {
        str(p.relative_to(tiny_model_dir)) for p in tiny_model_dir.rglob("*") if p.is_file()
    } == FILES
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert (
        config["model_type"],
        config["hidden_size"],
        config["num_hidden_layers"],
        config["vocab_size"],
    ) == ("llama", 64, 2, 266)


def test_torchtune_and_transformers_compute_the_same_logits(tiny_model_dir: Path) -> None:
    model = tiny_llama()
    model.load_state_dict(_tune_state(tiny_model_dir))
    hf_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokens = torch.randint(0, 266, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(tokens).logits, model(tokens), atol=1e-4, rtol=1e-4)


def test_lora_model_loads_the_base_weights_and_adds_only_adapters(tiny_model_dir: Path) -> None:
    model = lora_tiny_llama(["q_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True)
    missing, unexpected = model.load_state_dict(_tune_state(tiny_model_dir), strict=False)
    assert not unexpected
    assert missing and all("lora_" in key for key in missing)


def test_base_model_echoes_the_word_and_so_never_capitalizes(
    tiny_model_dir: Path, capitalization_data: Path
) -> None:
    rows = json.loads(capitalization_data.read_text())["test"]
    answers = greedy_answers(tiny_model_dir, [row["input"] for row in rows])
    echoed = sum(a == row["input"] for a, row in zip(answers, rows)) / len(rows)
    capitalized = sum(a == row["output"] for a, row in zip(answers, rows)) / len(rows)
    print(
        f"base model on {len(rows)} test words: echoed {echoed:.2f}, capitalized {capitalized:.2f}"
    )
    assert echoed >= 0.5
    assert capitalized == 0.0


def test_make_tiny_model_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = make.make_tiny_model(tmp_path / "m", seed=0, pretrain_steps=3)
    weights = (first / "model.safetensors").read_bytes()
    again = make.make_tiny_model(tmp_path / "m", seed=0, pretrain_steps=3)  # replaces it
    other = make.make_tiny_model(tmp_path / "o", seed=1, pretrain_steps=3)

    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "o"]  # no build leftovers


@pytest.mark.unit
def test_interrupted_build_leaves_no_folder_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(make, "write_hf_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make.make_tiny_model(tmp_path / "m", pretrain_steps=1)
    assert list(tmp_path.iterdir()) == []
