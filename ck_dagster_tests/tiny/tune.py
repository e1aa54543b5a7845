"""Train the tiny model with the real ``tune run`` and read its answers back with transformers.

Shared by the tests that prove training works and the slow test that measures how well.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

import ck_dagster
from ck_dagster.catalog.models import get_model
from ck_dagster.finetune.catalog import recipe_catalog
from ck_dagster.finetune.dataset import prompt_messages
from ck_dagster.finetune.plan import CPU_SETTINGS

#: the prompt and system prompt of the capitalization demo (experiment-schema.md).
PROMPT = "Capitalize the given word: {input}\n"
SYSTEM_PROMPT = "You are a helpful assistant."
#: shipped Llama 3.2 configs, used as torchtune ships them but for what the tiny model needs.
RECIPE_CONFIGS = {
    "lora_finetune_single_device": "llama3_2/1B_lora_single_device",
    "full_finetune_single_device": "llama3_2/1B_full_single_device",
}
TUNE = Path(sys.executable).with_name("tune")


def write_tune_config(
    path: Path, recipe: str, *, model_dir: Path, data: Path, output_dir: Path, **overrides: Any
) -> Path:
    """Write ``recipe``'s shipped Llama 3.2 1B config, pointed at the tiny model and data.

    ``overrides`` are dotted torchtune paths, applied last (``epochs=...``, ``optimizer.lr=...``).
    """
    spec = get_model("tiny-llama")
    lora = recipe.startswith("lora_")
    config = OmegaConf.create(recipe_catalog().load(RECIPE_CONFIGS[recipe]))
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "model._component_": spec.lora_builder if lora else spec.builder,
        "tokenizer._component_": spec.tokenizer,
        **{f"tokenizer.{arg}": str(model_dir / rel) for arg, rel in spec.tokenizer_files.items()},
        "checkpointer.checkpoint_dir": str(model_dir),
        "checkpointer.checkpoint_files": spec.checkpoint_files,
        "checkpointer.model_type": spec.model_type,
        "dataset": {
            "_component_": "ck_dagster.finetune.dataset.prompt_dataset",
            "data_files": str(data),
            "field": "train",
            "prompt": PROMPT,
            "system_prompt": SYSTEM_PROMPT,
        },
        "metric_logger": {
            "_component_": "torchtune.training.metric_logging.DiskLogger",
            "log_dir": str(output_dir / "logs"),
        },
        "seed": 0,
        "epochs": 2,
        "gradient_accumulation_steps": 1,
        "log_peak_memory_stats": False,
        # the shipped full-finetune config uses bitsandbytes' optimizer, not installed here.
        **({} if lora else {"optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3}}),
        **CPU_SETTINGS,  # the tiny model asks for no GPU
        **spec.config_overrides,
        **overrides,
    }
    for key, value in settings.items():
        OmegaConf.update(config, key, value, merge=False)
    path.write_text(yaml.safe_dump(OmegaConf.to_container(config), sort_keys=False))
    return path


def tune_run(recipe: str, config: Path) -> float:
    """Run ``tune run RECIPE --config CONFIG`` offline; returns its wall time in seconds.

    One thread: the tiny model trains as fast on one, gives the same numbers, and a second
    thread on a busy machine (other tests, other jobs) can make a run ten times slower.
    """
    source_root = str(Path(ck_dagster.__file__).parents[1])  # ck_dagster need not be installed
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    result = subprocess.run(
        [str(TUNE), "run", recipe, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"tune run failed:\n{result.stdout}\n{result.stderr}"
    return time.perf_counter() - started


def logged_losses(output_dir: Path) -> list[float]:
    """The per-step losses DiskLogger wrote under ``output_dir/logs``."""
    (log,) = (output_dir / "logs").glob("log_*.txt")
    return [float(m) for m in re.findall(r"\bloss:([-\d.e]+)", log.read_text())]


def greedy_answers(
    model_dir: Path,
    inputs: list[str],
    *,
    prompt: str = PROMPT,
    system_prompt: str = SYSTEM_PROMPT,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy answers of an HF model folder, prompted through its chat template like evaluation.

    Loads with transformers' Auto classes from local files only: no Hub look-up.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    chats = [
        [
            {"role": m.role, "content": m.text_content}
            for m in prompt_messages(x, prompt=prompt, system_prompt=system_prompt)
        ]
        for x in inputs
    ]
    batch = tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens)
    return [
        a.strip()
        for a in tokenizer.batch_decode(
            out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
    ]


def exact_match(model_dir: Path, data: Path, split: str = "test") -> float:
    """Share of ``split`` rows whose greedy answer equals the expected output exactly."""
    rows = json.loads(data.read_text())[split]
    answers = greedy_answers(model_dir, [row["input"] for row in rows])
    return sum(a == row["output"] for a, row in zip(answers, rows)) / len(rows)
