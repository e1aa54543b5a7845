"""A tiny experiment for evaluation tests and the benchmark: a fine-tuned run and a control.

The fine-tuned run ``tuned`` is a full fine-tune, which learns capitalization in seconds where
LoRA on this tiny model barely does.
"""

from __future__ import annotations

import json
from pathlib import Path

from ck_dagster.experiment.load import load_experiment
from ck_dagster.finetune.plan import RunPlan, plan_experiment
from ck_dagster.slurm.script import JobEnvironment
from ck_dagster_tests.tiny.tune import tune_run

PROMPT = "Capitalize the given word: {input}\n"
SYSTEM_PROMPT = "You are a helpful assistant."
#: epochs the session's fine-tuned run trains.
EPOCHS = 6
#: the prompt lines of ``controls`` (tests of prompt precedence replace them).
PROMPTS = f"""  prompt: {json.dumps(PROMPT)}
  system_prompt: {json.dumps(SYSTEM_PROMPT)}"""
RUNS = """
  - {name: tuned, type: fine-tuned, model: tiny-llama}
  - {name: base, type: control, model: tiny-llama}
"""
#: the built-in task on the first and last epoch of ``tuned``, on the base model of ``base``.
EVALUATION = f"""
evaluation:
  max_tokens: 12
  tasks:
    - name: capitalization
  matrix:
    - run: tuned
      epochs: [0, {EPOCHS - 1}]
"""


#: the base recipe of LoRA variants of the tiny experiment.
LORA_RECIPE = "llama3_2/1B_lora_single_device"


def write_experiment(
    folder: Path,
    model_dir: Path,
    data: Path,
    *,
    controls: str = PROMPTS,
    runs: str = RUNS,
    evaluation: str = EVALUATION,
    base_recipe: str = "llama3_2/1B_full_single_device",
) -> Path:
    """An experiment on the tiny model (runs in ``folder/runs``); ``controls`` lines follow the
    training controls, ``evaluation`` is the whole section."""
    file = folder / "experiment.yaml"
    file.write_text(f"""experiment: {{name: tiny_eval, dir: {folder / "runs"}}}
controls:
  base_recipe: {base_recipe}
  optimizer._component_: torch.optim.AdamW
  lr: 2e-3
  epochs: {EPOCHS}
  batch_size: 8
  seed: 0
{controls}
models: {{base: [{{name: tiny-llama, path: {model_dir}}}]}}
data: {{training: {{path: {data}}}}}
runs:{runs}
{evaluation}
""")
    return file


def trimmed_data(data: Path, folder: Path, *, test: int = 25, validation: int = 16) -> Path:
    """A copy of a capitalization dataset with fewer test and validation rows (quicker tests)."""
    rows = json.loads(data.read_text())
    rows["test"], rows["validation"] = rows["test"][:test], rows["validation"][:validation]
    trimmed = folder / "trimmed.json"
    trimmed.write_text(json.dumps(rows))
    return trimmed


def plan_run(file: Path, run: str) -> RunPlan:
    """The plan of one run of an experiment file."""
    return plan_experiment(load_experiment(file), JobEnvironment(), only=[run]).runs[run]


def train(plan: RunPlan) -> float:
    """Train a run with the real ``tune run`` from the ``finetune.yaml`` its plan writes;
    returns the wall seconds."""
    assert plan.recipe and plan.finetune_yaml
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / "finetune.yaml").write_text(plan.finetune_yaml)
    return tune_run(plan.recipe, plan.run_dir / "finetune.yaml")
