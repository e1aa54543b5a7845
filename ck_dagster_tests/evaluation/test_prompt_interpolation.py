"""Prompt parity with text OmegaConf would resolve: ``${oc.env:HOME}`` in a prompt trains (read
from ``finetune.yaml`` as ``tune run`` reads it) exactly as written, and as evaluation prompts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf
from torchtune import config as tune_config
from torchtune.data import Message

from ck_dagster.evaluation.spec import eval_spec_for
from ck_dagster.finetune.dataset import prompt_messages
from ck_dagster_tests.evaluation.tiny_experiment import plan_run

#: what a researcher might paste: an interpolation, an escaped one, a backslash before one.
PROMPT = "Input ${oc.env:HOME} \\${x} \\\\${y} $${z} {input}\n"
SYSTEM_PROMPT = "You are ${oc.env:USER}, ${missing}."


def test_interpolation_like_prompt_text_trains_and_evaluates_as_written(
    experiment: Callable[..., Path], tmp_path: Path
) -> None:
    plan = plan_run(
        experiment(
            controls=f"  prompt: {json.dumps(PROMPT)}\n  system_prompt: {json.dumps(SYSTEM_PROMPT)}"
        ),
        "tuned",
    )
    assert plan.finetune_yaml is not None
    written = tmp_path / "finetune.yaml"
    written.write_text(plan.finetune_yaml)
    # as `tune run` reads the config: OmegaConf.load, then every component instantiated
    config = OmegaConf.load(written)
    tokenizer = tune_config.instantiate(config.tokenizer)
    dataset = tune_config.instantiate(config.dataset, tokenizer)
    row = json.loads(Path(config.dataset.data_files).read_text())["train"][0]

    task = eval_spec_for(plan).tasks[0]
    assert (task.prompt, task.system_prompt) == (PROMPT, SYSTEM_PROMPT)
    messages = prompt_messages(row["input"], prompt=task.prompt, system_prompt=task.system_prompt)
    eval_tokens, _ = tokenizer.tokenize_messages(
        [*messages, Message(role="assistant", content="")], add_end_tokens=False
    )
    train_tokens = dataset[0]["tokens"]
    assert train_tokens[: len(eval_tokens)] == eval_tokens
    text = tokenizer.decode(eval_tokens, skip_special_tokens=False)
    # (the tokenizer strips each message, as in training)
    assert PROMPT.replace("{input}", row["input"]).strip() in text and SYSTEM_PROMPT in text
