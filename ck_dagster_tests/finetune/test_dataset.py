"""prompt_messages and prompt_dataset: what training sees is what evaluation prompts with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX, Message
from torchtune.datasets import PackedDataset
from transformers import AutoTokenizer

from ck_dagster.errors import CkError
from ck_dagster.finetune.dataset import prompt_dataset, prompt_messages
from ck_dagster.tiny.tokenizer import SPECIAL_IDS, load_tokenizer

PROMPT = "Capitalize the given word: {input}\n"
SYSTEM_PROMPT = "You are a helpful assistant."


def test_system_message_only_when_a_system_prompt_is_given() -> None:
    with_system = prompt_messages("apple", prompt=PROMPT, system_prompt=SYSTEM_PROMPT)
    without = prompt_messages("apple", prompt=PROMPT, system_prompt="")

    assert [(m.role, m.text_content) for m in with_system] == [
        ("system", SYSTEM_PROMPT),
        ("user", "Capitalize the given word: apple\n"),
    ]
    assert [(m.role, m.text_content) for m in without] == [
        ("user", "Capitalize the given word: apple\n")
    ]


def test_only_the_input_placeholder_is_substituted() -> None:
    (user,) = prompt_messages("x{y}", prompt="{0} {} {{input}} {name}: {input}", system_prompt="")
    assert user.text_content == "{0} {} {x{y}} {name}: x{y}"


def test_a_prompt_without_the_placeholder_is_refused() -> None:
    with pytest.raises(CkError, match=r"\{input\}"):
        prompt_messages("apple", prompt="Capitalize the word", system_prompt="")


def test_prompt_is_masked_unless_training_on_input() -> None:
    masked = prompt_messages("a", prompt=PROMPT, system_prompt=SYSTEM_PROMPT)
    trained = prompt_messages("a", prompt=PROMPT, system_prompt=SYSTEM_PROMPT, train_on_input=True)
    assert [m.masked for m in masked] == [True, True]
    assert [m.masked for m in trained] == [True, False]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps(
            {
                "train": [{"word": "apple", "answer": "Apple"}, {"word": "pear", "answer": "Pear"}],
                "validation": [{"word": "fig", "answer": "Fig"}],
                "test": [],
            }
        )
    )
    return path


def test_dataset_reads_one_field_and_trains_only_on_the_answer(
    tiny_model_dir: Path, data_file: Path
) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    train = prompt_dataset(
        tokenizer,
        data_files=str(data_file),
        prompt=PROMPT,
        system_prompt=SYSTEM_PROMPT,
        input_key="word",
        output_key="answer",
    )
    validation = prompt_dataset(
        tokenizer,
        data_files=str(data_file),
        field="validation",
        input_key="word",
        output_key="answer",
    )

    assert len(train) == 2 and len(validation) == 1
    sample = train[0]
    trained = [
        t
        for t, label in zip(sample["tokens"], sample["labels"])
        if label != CROSS_ENTROPY_IGNORE_IDX
    ]
    assert trained == [
        SPECIAL_IDS["<|start_header_id|>"],
        *b"assistant",
        SPECIAL_IDS["<|end_header_id|>"],
        *b"\n\nApple",
        SPECIAL_IDS["<|eot_id|>"],
    ]
    assert tokenizer.decode(validation[0]["tokens"]) == "figFig"  # headers are not decoded


def test_train_on_input_trains_on_the_user_message_too(
    tiny_model_dir: Path, data_file: Path
) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    sample = prompt_dataset(
        tokenizer,
        data_files=str(data_file),
        prompt=PROMPT,
        system_prompt=SYSTEM_PROMPT,
        input_key="word",
        output_key="answer",
        train_on_input=True,
    )[0]
    trained = bytes(
        t
        for t, label in zip(sample["tokens"], sample["labels"])
        if label != CROSS_ENTROPY_IGNORE_IDX and t < 256
    )
    assert b"Capitalize the given word: apple" in trained and trained.endswith(b"Apple")
    assert b"helpful" not in trained  # the system prompt stays masked, as in torchtune


def test_packed_dataset_packs_to_the_tokenizers_max_seq_len(
    tiny_model_dir: Path, data_file: Path
) -> None:
    packed = prompt_dataset(
        load_tokenizer(tiny_model_dir, max_seq_len=256),
        data_files=str(data_file),
        input_key="word",
        output_key="answer",
        packed=True,
    )
    assert isinstance(packed, PackedDataset)
    assert len(packed) == 1 and len(packed[0]["tokens"]) == 256


def test_prompt_parity_between_training_and_evaluation(
    tiny_model_dir: Path, capitalization_data: Path
) -> None:
    """Evaluation's prompt tokens are the start of the training tokens, and HF renders them too."""
    tokenizer = load_tokenizer(tiny_model_dir)
    dataset = prompt_dataset(
        tokenizer, data_files=str(capitalization_data), prompt=PROMPT, system_prompt=SYSTEM_PROMPT
    )
    row = json.loads(capitalization_data.read_text())["train"][0]
    messages = prompt_messages(row["input"], prompt=PROMPT, system_prompt=SYSTEM_PROMPT)
    # what torchtune's generate recipe (and our evaluation) feeds the model:
    eval_tokens, _ = tokenizer.tokenize_messages(
        [*messages, Message(role="assistant", content="")], add_end_tokens=False
    )
    train_tokens = dataset[0]["tokens"]

    assert train_tokens[: len(eval_tokens)] == eval_tokens
    assert train_tokens[len(eval_tokens) :] == [
        *row["output"].encode(),
        SPECIAL_IDS["<|eot_id|>"],
        SPECIAL_IDS["<|end_of_text|>"],
    ]
    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat = [{"role": m.role, "content": m.text_content} for m in messages]
    assert hf.apply_chat_template(chat, add_generation_prompt=True)["input_ids"] == eval_tokens
