"""The models ck_dagster knows: torchtune builders, tokenizer, checkpointer and SLURM size.

Adding a model is one :class:`KnownModel` entry in :data:`MODELS`. ``models.base[].name`` in an
experiment file must be one of these names; ``models.base[].path`` is the HF-format model folder
on disk, and every path below is relative to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ck_dagster.errors import did_you_mean
from ck_dagster.slurm.resources import RESOURCES_BY_SIZE, Resources


@dataclass(frozen=True)
class KnownModel:
    """One model family member as torchtune and SLURM need to know it."""

    name: str
    #: torchtune builder for full fine-tuning (``model._component_`` of a full recipe).
    builder: str
    #: torchtune builder for LoRA fine-tuning (``model._component_`` of a LoRA recipe).
    lora_builder: str
    #: ``tokenizer._component_``.
    tokenizer: str
    #: tokenizer arguments that are files, relative to the model folder.
    tokenizer_files: dict[str, str]
    #: ``checkpointer.checkpoint_files`` (a list, or torchtune's filename_format mapping).
    checkpoint_files: list[str] | dict[str, str]
    #: ``checkpointer.model_type``.
    model_type: str
    #: size class for SLURM resources: a key of ``RESOURCES_BY_SIZE``.
    size: str
    #: config values this model needs whatever the recipe says (source "model" in provenance).
    config_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def resources(self) -> Resources:
        """SLURM resources for this model's size class (before ``runs[].compute``)."""
        return RESOURCES_BY_SIZE[self.size]


def _shards(count: int) -> list[str]:
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


_LLAMA_TOKENIZER = "torchtune.models.llama3.llama3_tokenizer"
_LLAMA_TOKENIZER_FILES = {"path": "original/tokenizer.model"}
_QWEN_TOKENIZER = "torchtune.models.qwen2_5.qwen2_5_tokenizer"
_QWEN_TOKENIZER_FILES = {"path": "vocab.json", "merges_file": "merges.txt"}


def _llama(
    name: str,
    module: str,
    suffix: str,
    files: list[str] | dict[str, str],
    model_type: str,
    size: str,
) -> KnownModel:
    return KnownModel(
        name=name,
        builder=f"torchtune.models.{module}.{module}_{suffix}",
        lora_builder=f"torchtune.models.{module}.lora_{module}_{suffix}",
        tokenizer=_LLAMA_TOKENIZER,
        tokenizer_files=_LLAMA_TOKENIZER_FILES,
        checkpoint_files=files,
        model_type=model_type,
        size=size,
    )


def _qwen(name: str, suffix: str, files: list[str], size: str) -> KnownModel:
    return KnownModel(
        name=name,
        builder=f"torchtune.models.qwen2_5.qwen2_5_{suffix}",
        lora_builder=f"torchtune.models.qwen2_5.lora_qwen2_5_{suffix}",
        tokenizer=_QWEN_TOKENIZER,
        tokenizer_files=_QWEN_TOKENIZER_FILES,
        checkpoint_files=files,
        model_type="QWEN2",
        size=size,
    )


_KNOWN = [
    _llama("Llama-3.2-1B-Instruct", "llama3_2", "1b", ["model.safetensors"], "LLAMA3_2", "1B"),
    _llama("Llama-3.2-3B-Instruct", "llama3_2", "3b", _shards(2), "LLAMA3_2", "3B"),
    _llama("Llama-3.1-8B-Instruct", "llama3_1", "8b", _shards(4), "LLAMA3", "8B"),
    KnownModel(
        name="Llama-3.3-70B-Instruct",
        builder="torchtune.models.llama3_3.llama3_3_70b",
        lora_builder="torchtune.models.llama3_3.lora_llama3_3_70b",
        tokenizer=_LLAMA_TOKENIZER,
        tokenizer_files=_LLAMA_TOKENIZER_FILES,
        checkpoint_files={"filename_format": "model-{}-of-{}.safetensors", "max_filename": "00030"},
        model_type="LLAMA3",
        size="70B",
    ),
    _qwen("Qwen2.5-0.5B-Instruct", "0_5b", ["model.safetensors"], "1B"),
    _qwen("Qwen2.5-1.5B-Instruct", "1_5b_instruct", ["model.safetensors"], "1B"),
    _qwen("Qwen2.5-3B-Instruct", "3b", _shards(2), "3B"),
    _qwen("Qwen2.5-7B-Instruct", "7b_instruct", _shards(4), "8B"),
    # A ~90k-parameter Llama-3.2-shaped model made locally by `ck-dagster make-tiny-model`:
    # trains on CPU in seconds, for tests, the demo and laptops.
    KnownModel(
        name="tiny-llama",
        builder="ck_dagster.tiny.model.tiny_llama",
        lora_builder="ck_dagster.tiny.model.lora_tiny_llama",
        tokenizer=_LLAMA_TOKENIZER,
        tokenizer_files={
            "path": "original/tokenizer.model",
            "special_tokens_path": "tokenizer.json",
        },
        checkpoint_files=["model.safetensors"],
        model_type="LLAMA3_2",
        size="tiny",
        # the model's own context; device and precision follow from asking for no GPU
        config_overrides={"tokenizer.max_seq_len": 256},
    ),
]

#: every known model by name.
MODELS: dict[str, KnownModel] = {model.name: model for model in _KNOWN}


def get_model(name: str) -> KnownModel:
    """The known model called ``name``; ``KeyError`` names the closest ones."""
    try:
        return MODELS[name]
    except KeyError:
        hint = did_you_mean(name, MODELS)
        raise KeyError(f"unknown model `{name}`" + (f"; {hint}" if hint else "")) from None
