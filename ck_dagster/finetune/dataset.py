"""The dataset component of every generated torchtune config, and the conversation it trains on.

``prompt_messages`` is the one place a sample becomes a conversation: training
(``prompt_dataset``, inside ``tune run``) and evaluation both call it, so the model is scored on
exactly the prompt it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torchtune.data import Message
from torchtune.datasets import PackedDataset, SFTDataset
from torchtune.modules.transforms import Transform
from torchtune.modules.transforms.tokenizers import ModelTokenizer

# the placeholder a prompt must contain; nothing else in a prompt is interpreted
from ck_dagster.catalog.parameters import INPUT_PLACEHOLDER
from ck_dagster.errors import CkError


def prompt_messages(
    input_text: str, *, prompt: str, system_prompt: str, train_on_input: bool = False
) -> list[Message]:
    """The system (when ``system_prompt`` is non-empty) and user messages for one input.

    The user message is ``prompt`` with every ``{input}`` replaced by ``input_text``; other
    braces stay literal. The prompt is masked from the loss unless ``train_on_input``.
    """
    if INPUT_PLACEHOLDER not in prompt:
        raise CkError(
            f"prompt {prompt!r} has no {INPUT_PLACEHOLDER} placeholder: "
            "the model would never see the input"
        )
    messages = [Message(role="system", content=system_prompt, masked=True)] if system_prompt else []
    messages.append(
        Message(
            role="user",
            content=prompt.replace(INPUT_PLACEHOLDER, input_text),
            masked=not train_on_input,
        )
    )
    return messages


class PromptToMessages(Transform):
    """A row ``{input_key: ..., output_key: ...}`` as ``prompt_messages`` + the assistant answer."""

    def __init__(
        self,
        *,
        prompt: str,
        system_prompt: str,
        input_key: str,
        output_key: str,
        train_on_input: bool,
    ) -> None:
        self.prompt = prompt
        self.system_prompt = system_prompt
        self.input_key = input_key
        self.output_key = output_key
        self.train_on_input = train_on_input

    def __call__(self, sample: Mapping[str, Any]) -> Mapping[str, Any]:
        messages = prompt_messages(
            str(sample[self.input_key]),
            prompt=self.prompt,
            system_prompt=self.system_prompt,
            train_on_input=self.train_on_input,
        )
        messages.append(Message(role="assistant", content=str(sample[self.output_key])))
        return {"messages": messages}


def prompt_dataset(
    tokenizer: ModelTokenizer,
    *,
    source: str = "json",
    data_files: str | list[str],
    field: str = "train",
    prompt: str = INPUT_PLACEHOLDER,
    system_prompt: str = "",
    input_key: str = "input",
    output_key: str = "output",
    train_on_input: bool = False,
    packed: bool = False,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> SFTDataset | PackedDataset:
    """torchtune's SFTDataset over one split of the data: a top-level list (``field``) of a
    train/validation/test JSON, or (``source: parquet``) the split's parquet files.

    Used as ``dataset._component_: ck_dagster.finetune.dataset.prompt_dataset``; the files are
    read locally by the datasets ``json``/``parquet`` loaders, so nothing is fetched from the Hub.
    """
    message_transform = PromptToMessages(
        prompt=prompt,
        system_prompt=system_prompt,
        input_key=input_key,
        output_key=output_key,
        train_on_input=train_on_input,
    )
    ds = SFTDataset(
        source=source,
        message_transform=message_transform,
        model_transform=tokenizer,
        data_files=data_files,
        split=split,
        **({"field": field} if source == "json" else {}),
        **load_dataset_kwargs,
    )
    if packed:
        if tokenizer.max_seq_len is None:
            raise CkError("dataset.packed needs tokenizer.max_seq_len to be set")
        return PackedDataset(ds, max_seq_len=tokenizer.max_seq_len)
    return ds
