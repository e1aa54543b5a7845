"""The tiny model's tokenizer files: one token per byte plus Llama 3's special tokens.

torchtune reads them with its own ``llama3_tokenizer`` (``original/tokenizer.model`` is a tiktoken
file, ``tokenizer.json`` supplies the special-token ids); transformers reads ``tokenizer.json``
and ``tokenizer_config.json``, whose chat template renders exactly the ids torchtune produces.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torchtune.models.llama3 import Llama3Tokenizer, llama3_tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

#: byte tokens take ids 0-255; the special tokens follow, in this order.
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|python_tag|>",
    "<|image|>",
]
SPECIAL_IDS = {token: 256 + i for i, token in enumerate(SPECIAL_TOKENS)}
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
BOS_ID = SPECIAL_IDS["<|begin_of_text|>"]
PAD_ID = SPECIAL_IDS["<|finetune_right_pad_id|>"]
#: the ids torchtune's Llama3Tokenizer stops generation on (its ``stop_tokens``).
STOP_IDS = [SPECIAL_IDS[t] for t in ("<|end_of_text|>", "<|eot_id|>", "<|eom_id|>")]

#: torchtune's Llama 3 prompt format as a Jinja chat template: contents are stripped, as
#: ``Llama3Tokenizer._tokenize_body`` does; the generation prompt is an empty assistant header.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] | trim + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

TIKTOKEN_FILE = "original/tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"


def write_tokenizer_files(directory: Path) -> None:
    """Write ``original/tokenizer.model``, ``tokenizer.json``, ``tokenizer_config.json``."""
    tiktoken_file = directory / TIKTOKEN_FILE
    tiktoken_file.parent.mkdir(parents=True, exist_ok=True)
    tiktoken_file.write_text(
        "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256))
    )
    _hf_tokenizer().save(str(directory / TOKENIZER_JSON))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "pad_token": "<|finetune_right_pad_id|>",
                "padding_side": "left",
                "model_max_length": 256,
                "clean_up_tokenization_spaces": False,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
        + "\n"
    )


def _hf_tokenizer() -> Tokenizer:
    """A byte-level tokenizer with the same ids as the tiktoken file and no merges.

    No post-processor adds a BOS: the chat template writes it, so ``tokenizer(rendered_chat)``
    (what inspect-ai's ``hf/`` provider does) gives the same ids as torchtune.
    """
    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def load_tokenizer(model_dir: Path, max_seq_len: int | None = 256) -> Llama3Tokenizer:
    """torchtune's Llama 3 tokenizer over a tiny model folder, as ``tiny-llama``'s spec makes it."""
    return llama3_tokenizer(
        path=str(model_dir / TIKTOKEN_FILE),
        special_tokens_path=str(model_dir / TOKENIZER_JSON),
        max_seq_len=max_seq_len,
    )
