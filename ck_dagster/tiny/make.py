"""``make_tiny_model``: the tiny-llama model folder, pre-trained in-process on CPU to echo words.

A random model learns nothing in a short fine-tune, so the base is first taught the chat format
and to echo the word at the end of a user message (made-up words and random letters, in varied
instructions and system prompts). It never sees a word change case, so it scores 0 on
capitalization until fine-tuned, and a fine-tune of a few hundred steps teaches it.
"""

from __future__ import annotations

import os
import random
import string
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torchtune.data import CROSS_ENTROPY_IGNORE_IDX, Message, padded_collate_sft
from torchtune.models.llama3 import Llama3Tokenizer
from torchtune.modules import TransformerDecoder

from ck_dagster.finetune.dataset import prompt_messages
from ck_dagster.tiny.data import made_up_word
from ck_dagster.tiny.model import tiny_llama, write_hf_model
from ck_dagster.tiny.tokenizer import PAD_ID, load_tokenizer, write_tokenizer_files

#: instructions and system prompts the echo task is asked with, so that the base model echoes
#: the word at the end of an unseen instruction (such as "Capitalize the given word: ...").
_INSTRUCTIONS = [
    "{input}",
    "Repeat the given word: {input}",
    "Repeat the given word: {input}\n",
    "Copy this word: {input}",
    "Echo: {input}",
    "Say the word {input}",
    "Word: {input}\n",
    "Please repeat the word below.\n{input}",
    "Write the given word exactly: {input}",
]
_SYSTEM_PROMPTS = ["", "You are a helpful assistant.", "You repeat words.", "Answer with one word."]


def make_tiny_model(directory: Path, *, seed: int = 0, pretrain_steps: int = 900) -> Path:
    """Write the ``tiny-llama`` HF-format folder at ``directory`` (replacing one) and return it.

    The folder is built beside ``directory`` and renamed into place, so an interrupted run never
    leaves a folder that looks complete. Pre-training runs on one CPU thread: the result is the
    same for a seed whatever the core count, and a busy machine does not slow it tenfold.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix=f".{directory.name}.", dir=directory.parent) as tmp:
        build = Path(tmp) / "model"
        build.mkdir()
        write_tokenizer_files(build)
        torch.manual_seed(seed)
        model = tiny_llama()
        # torchtune leaves nn.Embedding's N(0, 1) init, which tied to the output starts the loss
        # near 60; Llama's own init (std 0.02) starts it at ln(vocab size).
        torch.nn.init.normal_(model.tok_embeddings.weight, std=0.02)
        torch.set_num_threads(1)
        try:
            losses = pretrain(model, load_tokenizer(build), steps=pretrain_steps, seed=seed)
        finally:
            torch.set_num_threads(threads)
        trained = time.perf_counter()
        write_hf_model(model, build)
        if directory.exists():
            os.replace(directory, Path(tmp) / "replaced")  # deleted with the temp folder
        os.replace(build, directory)
    print(
        f"make_tiny_model: {pretrain_steps} pre-training steps (loss {losses[0]:.2f} -> "
        f"{losses[-1]:.3f}) in {trained - started:.1f} s, "
        f"{time.perf_counter() - started:.1f} s in all -> {directory}"
    )
    return directory


def pretrain(
    model: TransformerDecoder,
    tokenizer: Llama3Tokenizer,
    *,
    steps: int,
    seed: int,
    batch_size: int = 32,
    lr: float = 3e-3,
) -> list[float]:
    """Train ``model`` in place on freshly drawn echo conversations; returns the loss per step.

    Echoing is learned in a sudden drop of the loss, which comes later (past the step budget
    for some seeds) with Adam's default beta2 or with a rate that is already decaying: so
    beta2 is 0.95 and the rate warms up over 5% of the steps, holds, and decays over the last 20%.
    """
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup, decay = max(1, steps // 20), max(1, steps // 5)
    scheduler = LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, 1.0, (steps - step) / decay)
    )
    model.train()
    losses = []
    for batch in _echo_batches(rng, tokenizer, steps, batch_size):
        logits = model(batch["tokens"])
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _sft_sample(tokenizer: Llama3Tokenizer, messages: list[Message]) -> dict[str, Any]:
    """Tokens and labels as torchtune's SFT datasets make them: masked tokens (the prompt) are
    ignored by the loss."""
    sample = tokenizer({"messages": messages})
    sample["labels"] = [
        CROSS_ENTROPY_IGNORE_IDX if masked else token
        for token, masked in zip(sample["tokens"], sample["mask"])
    ]
    return sample


def _echo_batches(
    rng: random.Random, tokenizer: Llama3Tokenizer, count: int, batch_size: int, bucket: int = 4
) -> Iterator[dict[str, torch.Tensor]]:
    """``count`` padded batches; ``bucket`` at a time are cut from one length-sorted draw, which
    pads a fifth fewer tokens than drawing each batch alone."""
    while count > 0:
        draw = sorted(
            (_sft_sample(tokenizer, echo_conversation(rng)) for _ in range(batch_size * bucket)),
            key=lambda s: len(s["tokens"]),
        )
        batches = [draw[i : i + batch_size] for i in range(0, len(draw), batch_size)]
        rng.shuffle(batches)
        for batch in batches[:count]:
            yield padded_collate_sft(batch, padding_idx=PAD_ID)
        count -= len(batches)


def echo_conversation(rng: random.Random) -> list[Message]:
    """A conversation whose answer is the word at the end of the user message, unchanged.

    Some words are Title- or UPPER-case (echoed as they are), so the model learns to write
    capitals; no word ever changes case, so capitalizing is left for fine-tuning to teach.
    """
    # Half are random letters: a word-like guess cannot lower their loss, only copying can.
    word = (
        made_up_word(rng)
        if rng.random() < 0.5
        else "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8)))
    )
    word = rng.choices([word, word.capitalize(), word.upper()], weights=[70, 15, 15])[0]
    messages = prompt_messages(
        word, prompt=rng.choice(_INSTRUCTIONS), system_prompt=rng.choice(_SYSTEM_PROMPTS)
    )
    return [*messages, Message(role="assistant", content=word)]
