"""torchtune builders for ``tiny-llama``, a 91k-parameter Llama-3.2-shaped model, and its HF files.

The builders stand in for ``llama3_2_1b`` / ``lora_llama3_2_1b`` in a torchtune config (same
keyword arguments), so any Llama 3.2 recipe trains the tiny model on CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torchtune.models.convert_weights import tune_to_hf
from torchtune.models.llama3_2 import llama3_2, lora_llama3_2
from torchtune.modules import TransformerDecoder
from torchtune.modules.peft import LORA_ATTN_MODULES

from ck_dagster.tiny.tokenizer import BOS_ID, PAD_ID, STOP_IDS, VOCAB_SIZE

#: the model's dimensions, shared by both builders and ``config.json``.
DIMS: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "embed_dim": 64,
    "intermediate_dim": 128,
    "max_seq_len": 256,
    "rope_base": 500_000,
    "scale_factor": 32,
    "norm_eps": 1e-5,
}
HEAD_DIM = DIMS["embed_dim"] // DIMS["num_heads"]
#: ``wide-llama``: the tiny model's vocabulary in a realistically wide body (~101M parameters,
#: random weights), for benchmarks where loading and storing weights must cost what it does.
WIDE_DIMS: dict[str, Any] = {
    **DIMS,
    "num_layers": 16,
    "num_heads": 12,
    "num_kv_heads": 4,
    "embed_dim": 768,
    "intermediate_dim": 2048,
}


def tiny_llama() -> TransformerDecoder:
    """The tiny model for full fine-tuning (``model._component_`` of a full recipe)."""
    return llama3_2(**DIMS, tie_word_embeddings=True)


def wide_llama() -> TransformerDecoder:
    """The wide bench model for full fine-tuning and evaluation."""
    return llama3_2(**WIDE_DIMS, tie_word_embeddings=True)


def lora_wide_llama(lora_attn_modules: list[LORA_ATTN_MODULES], **lora: Any) -> TransformerDecoder:
    """The wide bench model with LoRA adapters (``lora_tiny_llama``'s arguments)."""
    return lora_llama3_2(
        lora_attn_modules=lora_attn_modules, **WIDE_DIMS, **lora, tie_word_embeddings=True
    )


def lora_tiny_llama(
    lora_attn_modules: list[LORA_ATTN_MODULES],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    lora_rank: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> TransformerDecoder:
    """The tiny model with LoRA adapters; the arguments are ``lora_llama3_2_1b``'s."""
    return lora_llama3_2(
        lora_attn_modules=lora_attn_modules,
        apply_lora_to_mlp=apply_lora_to_mlp,
        apply_lora_to_output=apply_lora_to_output,
        **DIMS,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        use_dora=use_dora,
        quantize_base=quantize_base,
        tie_word_embeddings=True,
    )


def hf_config(dims: dict[str, Any] = DIMS) -> dict[str, Any]:
    """``config.json`` for transformers and torchtune's ``FullModelHFCheckpointer``.

    ``max_position_embeddings`` is Llama 3.2's, not the tiny context: transformers warns about the
    llama3 rope scaling when it is below the rope's original maximum.
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": dims["vocab_size"],
        "hidden_size": dims["embed_dim"],
        "intermediate_size": dims["intermediate_dim"],
        "num_hidden_layers": dims["num_layers"],
        "num_attention_heads": dims["num_heads"],
        "num_key_value_heads": dims["num_kv_heads"],
        "head_dim": dims["embed_dim"] // dims["num_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": dims["norm_eps"],
        "rope_theta": float(dims["rope_base"]),
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": float(dims["scale_factor"]),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": STOP_IDS,
        "pad_token_id": PAD_ID,
        "torch_dtype": "float32",
    }


def write_hf_model(model: TransformerDecoder, directory: Path, dims: dict[str, Any] = DIMS) -> None:
    """Write ``model.safetensors`` (HF key names), ``config.json``, ``generation_config.json``."""
    hf_state = tune_to_hf(
        model.state_dict(),
        num_heads=dims["num_heads"],
        num_kv_heads=dims["num_kv_heads"],
        dim=dims["embed_dim"],
        head_dim=dims["embed_dim"] // dims["num_heads"],
    )
    save_file(
        {key: value.contiguous() for key, value in hf_state.items()},
        directory / "model.safetensors",
        metadata={"format": "pt"},
    )
    (directory / "model.safetensors").chmod(0o644)  # safetensors writes it 0600
    (directory / "config.json").write_text(json.dumps(hf_config(dims), indent=2) + "\n")
    (directory / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": BOS_ID,
                "eos_token_id": STOP_IDS,
                "pad_token_id": PAD_ID,
                "do_sample": False,
            },
            indent=2,
        )
        + "\n"
    )
