"""The ``torchtune/`` provider: training's prompt tokens, inspect's settings, batching, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from inspect_ai import eval as inspect_eval
from inspect_ai.log import EvalLog, read_eval_log
from inspect_ai.model import get_model
from omegaconf import OmegaConf
from torchtune import config as tune_config
from transformers import AutoTokenizer

from ck_dagster.catalog.models import get_model as get_model_spec
from ck_dagster.errors import CkError
from ck_dagster.evaluation.provider import (
    Decoding,
    ProviderArgs,
    generate,
    load_checkpoint,
    prompt_tokens,
)
from ck_dagster.evaluation.spec import EvalSpec, TorchtuneModel, eval_spec_for
from ck_dagster.evaluation.tasks import load_task
from ck_dagster.finetune.dataset import prompt_messages
from ck_dagster.finetune.plan import RunPlan
from ck_dagster.tiny.tokenizer import SPECIAL_IDS
from ck_dagster_tests.evaluation.tiny_experiment import PROMPT, SYSTEM_PROMPT, plan_run
from ck_dagster_tests.tiny.tune import greedy_answers


@pytest.fixture
def plan(experiment: Callable[..., Path]) -> RunPlan:
    return plan_run(experiment(), "tuned")


def run_eval(
    spec: EvalSpec,
    checkpoint_dir: Path,
    log_dir: Path,
    *,
    do_sample: bool = False,
    limit: int = 6,
    **generate: Any,
) -> EvalLog:
    """The spec's first task on ``checkpoint_dir`` through the provider, read back from disk."""
    model = get_model(
        "torchtune/test",
        memoize=False,
        **ProviderArgs(checkpoint_dir, spec.model, do_sample).as_model_args(),
    )
    with model:
        (log,) = inspect_eval(
            load_task(spec, spec.tasks[0]),
            model=model,
            limit=limit,
            log_dir=str(log_dir),
            display="none",
            **generate,
        )
    return read_eval_log(log.location)


def model_calls(log: EvalLog) -> list[dict[str, Any]]:
    """Each sample's (only) model call: what the provider fed the model and got back."""
    calls = []
    for sample in log.samples or []:
        (event,) = [e for e in sample.events if e.event == "model"]
        assert event.call is not None
        calls.append({**event.call.request, **(event.call.response or {})})
    return calls


def test_provider_feeds_the_model_exactly_the_tokens_training_starts_with(
    plan: RunPlan, tiny_model_dir: Path, tmp_path: Path
) -> None:
    assert plan.config is not None
    spec = eval_spec_for(plan)
    log = run_eval(spec, tiny_model_dir, tmp_path, max_tokens=4)
    # the test rows as `tune run` tokenizes training rows: the run's own dataset and tokenizer
    tokenizer = tune_config.instantiate(OmegaConf.create(plan.config.get("tokenizer")))
    training = tune_config.instantiate(
        OmegaConf.create({**plan.config.get("dataset"), "field": "test"}), tokenizer
    )
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    assert log.status == "success" and len(model_calls(log)) == 6
    for sample, call in zip(log.samples or [], model_calls(log)):
        row = training[int(sample.id) - 1]["tokens"]
        prompt = call["prompt_tokens"]
        assert row[: len(prompt)] == prompt
        assert row[len(prompt) :] == [
            *str(sample.target).encode(),
            SPECIAL_IDS["<|eot_id|>"],
            SPECIAL_IDS["<|end_of_text|>"],
        ]
        text = tokenizer.decode(prompt, truncate_at_eos=False, skip_special_tokens=False)
        assert isinstance(sample.input, list)
        chat = [{"role": m.role, "content": m.text} for m in sample.input]
        assert text == hf_tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=False
        )
        assert text.endswith(
            f"{PROMPT.format(input=sample.metadata['input']).strip()}"
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        )


def test_batches_generate_what_one_prompt_at_a_time_does(tiny_model_dir: Path) -> None:
    checkpoint = load_checkpoint(
        TorchtuneModel.of(get_model_spec("tiny-llama"), tiny_model_dir), tiny_model_dir
    )
    prompts = [
        prompt_tokens(
            checkpoint.tokenizer, prompt_messages(word, prompt=prompt, system_prompt=system)
        )
        for word, prompt, system in [
            ("apple", PROMPT, SYSTEM_PROMPT),
            ("fig", "{input}", ""),
            ("blueberry", "Repeat the given word: {input}", "You repeat words."),
        ]
    ]
    alone = [generate(checkpoint, [prompt], Decoding(12))[0] for prompt in prompts]
    together = generate(checkpoint, prompts, Decoding(12))
    short = generate(checkpoint, prompts, Decoding(2))

    assert together == alone
    assert all(g.stopped and 2 < len(g.tokens) < 12 for g in alone)
    assert [(g.tokens, g.stopped) for g in short] == [(g.tokens[:2], False) for g in alone]


def test_generate_settings_reach_the_log_and_are_obeyed(
    plan: RunPlan, tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = eval_spec_for(plan)
    short = run_eval(spec, tiny_model_dir, tmp_path / "short", max_tokens=2)
    assert short.plan.config.max_tokens == 2
    assert all(c["max_new_tokens"] == 2 and len(c["tokens"]) <= 2 for c in model_calls(short))
    assert {s.output.stop_reason for s in short.samples or []} == {"max_tokens"}

    def sampled(seed: int) -> tuple[EvalLog, list[str]]:
        log = run_eval(
            spec,
            tiny_model_dir,
            tmp_path / f"seed{seed}",
            do_sample=True,
            temperature=3.0,
            seed=seed,
            max_tokens=6,
            max_connections=1,
        )
        return log, [s.output.completion for s in log.samples or []]

    log, first = sampled(1)
    assert (log.plan.config.temperature, log.plan.config.seed) == (3.0, 1)
    assert log.eval.model_args["do_sample"] is True
    assert {c["temperature"] for c in model_calls(log)} == {3.0}
    assert sampled(1)[1] == first
    assert sampled(2)[1] != first
    greedy = run_eval(spec, tiny_model_dir, tmp_path / "greedy", temperature=3.0, seed=1)
    assert {c["temperature"] for c in model_calls(greedy)} == {None}


def test_model_args_are_checked_by_name(tiny_model_dir: Path) -> None:
    with pytest.raises(CkError, match="needs -M checkpoint_dir"):
        ProviderArgs.parse({"ck_model": "tiny-llama"})
    with pytest.raises(CkError, match="unknown model `tiny-lama`"):
        ProviderArgs.parse({"checkpoint_dir": tiny_model_dir, "ck_model": "tiny-lama"})
    with pytest.raises(CkError, match="max_seq"):
        ProviderArgs.parse(
            {"checkpoint_dir": tiny_model_dir, "ck_model": "tiny-llama", "max_seq": 12}
        )
    args = ProviderArgs.parse(
        {
            "checkpoint_dir": str(tiny_model_dir),
            "ck_model": "tiny-llama",
            "dtype": "bf16",
            "do_sample": True,
        }
    )
    assert (args.model.device, args.model.dtype, args.do_sample) == ("cpu", "bf16", True)
    assert args.model.tokenizer["path"] == str(tiny_model_dir / "original/tokenizer.model")
    assert ProviderArgs.parse(args.as_model_args()) == args


TASK_FILE = """
from inspect_ai import task
from ck_dagster.evaluation.tasks import input_output

@task
def capitalization(data_path: str):
    return input_output(data_path=data_path, prompt={prompt!r}, system_prompt={system!r})
"""


@pytest.mark.slow
def test_inspect_cli_finds_the_provider_through_the_entry_point(
    tiny_model_dir: Path, capitalization_data: Path, tmp_path: Path
) -> None:
    (tmp_path / "cap_task.py").write_text(TASK_FILE.format(prompt=PROMPT, system=SYSTEM_PROMPT))
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("inspect")),
            "eval",
            "cap_task.py",
            "--model",
            "torchtune/tiny",
            "-M",
            f"checkpoint_dir={tiny_model_dir}",
            "-M",
            "ck_model=tiny-llama",
            "-M",
            "do_sample=false",
            "--max-tokens",
            "12",
            "-T",
            f"data_path={capitalization_data}",
            "--limit",
            "5",
            "--log-dir",
            "logs",
            "--display",
            "none",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TIKTOKEN_CACHE_DIR": ""},
    )
    assert done.returncode == 0, done.stdout + done.stderr

    (log_file,) = (tmp_path / "logs").glob("*.eval")
    log = read_eval_log(str(log_file))
    assert (log.status, log.eval.model, log.eval.task) == (
        "success",
        "torchtune/tiny",
        "capitalization",
    )
    assert log.eval.model_args["ck_model"] == "tiny-llama"
    assert log.results is not None and log.results.completed_samples == 5
    # transformers, prompted through the folder's chat template, answers the same
    inputs = [s.metadata["input"] for s in log.samples or []]
    assert [s.output.completion for s in log.samples or []] == greedy_answers(
        tiny_model_dir, inputs, prompt=PROMPT, system_prompt=SYSTEM_PROMPT, max_new_tokens=12
    )
