"""The tiny tokenizer gives torchtune and transformers the same ids: prompt parity rests on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from torchtune.data import Message
from transformers import AutoTokenizer

from ck_dagster.finetune.dataset import prompt_messages
from ck_dagster.tiny.tokenizer import (
    SPECIAL_IDS,
    STOP_IDS,
    VOCAB_SIZE,
    load_tokenizer,
    write_tokenizer_files,
)

pytestmark = pytest.mark.unit

PROMPTS = [
    ("Capitalize the given word: {input}\n", "You are a helpful assistant."),
    ("{input}", ""),
    ("  Braces {stay} {} literal; ünïcödé ✓ and tabs\t: {input}  ", " Trim me. "),
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer_files(directory)
    return directory


def test_torchtune_reads_the_special_tokens_at_the_ids_written(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.special_tokens == SPECIAL_IDS
    assert tokenizer.vocab_size == VOCAB_SIZE == 266
    assert tokenizer.stop_tokens == STOP_IDS
    assert tokenizer.encode("héllo", add_bos=False, add_eos=False) == list("héllo".encode())


@pytest.mark.parametrize("prompt,system_prompt", PROMPTS)
def test_chat_template_renders_torchtunes_generation_prompt(
    tokenizer_dir: Path, prompt: str, system_prompt: str
) -> None:
    messages = prompt_messages("apple", prompt=prompt, system_prompt=system_prompt)
    expected, _ = load_tokenizer(tokenizer_dir).tokenize_messages(
        [*messages, Message(role="assistant", content="")], add_end_tokens=False
    )
    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    chat = [{"role": m.role, "content": m.text_content} for m in messages]

    assert hf.apply_chat_template(chat, add_generation_prompt=True)["input_ids"] == expected
    # inspect-ai's hf provider renders the text, then tokenizes it with special tokens on:
    text = hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert hf(text)["input_ids"] == expected


def test_hf_decodes_an_answer_without_special_tokens(tokenizer_dir: Path) -> None:
    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = hf("Ünïcode ✓")["input_ids"] + [SPECIAL_IDS["<|eot_id|>"]]
    assert hf.decode(ids, skip_special_tokens=True) == "Ünïcode ✓"
    assert hf.pad_token_id == SPECIAL_IDS["<|finetune_right_pad_id|>"]
