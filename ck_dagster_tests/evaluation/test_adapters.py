"""LoRA epochs evaluated as their adapter on the base model: ck_dagster's recipe keeps the asked
epochs, stashes adapters and logs validation loss (real ``tune run``), and the eval job scores
base + adapter exactly as torchtune's merged weights (same prompt tokens, answers and scores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from inspect_ai.log import read_eval_log

from ck_dagster.evaluation.results import read_results
from ck_dagster.evaluation.spec import EvalSpec, eval_spec_for
from ck_dagster.finetune.plan import RunPlan
from ck_dagster.slurm.script import OFFLINE_ENVIRONMENT
from ck_dagster.training.artifacts import FINISHED, read_training_log
from ck_dagster_tests.evaluation.test_provider import model_calls
from ck_dagster_tests.evaluation.tiny_experiment import (
    EPOCHS,
    LORA_RECIPE,
    PROMPTS,
    plan_run,
    train,
    trimmed_data,
    write_experiment,
)

pytestmark = pytest.mark.slow

KEPT = (1, EPOCHS - 1)
CONTROLS = f"""{PROMPTS}
  num_warmup_steps: 5
  gradient_accumulation_steps: 1
  max_steps_per_epoch: 8
  epochs_to_save: "{KEPT[0]},{KEPT[1]}"
  stash_adapter_weights: true
  validation_during_training: true
"""
EVALUATION = f"""
evaluation:
  max_tokens: 12
  tasks: [{{name: capitalization}}]
  matrix: [{{run: tuned, epochs: [{EPOCHS - 1}]}}, {{run: base}}]
"""


@pytest.fixture(scope="module")
def lora_plans(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, capitalization_data: Path
) -> dict[str, RunPlan]:
    """The tuned LoRA run (trained once by ``tune run``) and the control run on its base."""
    folder = tmp_path_factory.mktemp("lora")
    file = write_experiment(
        folder,
        tiny_model_dir,
        trimmed_data(capitalization_data, folder),
        controls=CONTROLS,
        evaluation=EVALUATION,
        base_recipe=LORA_RECIPE,
    )
    plans = {run: plan_run(file, run) for run in ("tuned", "base")}
    print(f"trained {plans['tuned'].recipe} in {train(plans['tuned']):.1f} s")
    return plans


def test_only_kept_epochs_are_saved_with_stashed_adapters_and_validation_loss(
    lora_plans: dict[str, RunPlan],
) -> None:
    plan = lora_plans["tuned"]
    artifacts = plan.artifacts_dir
    assert plan.recipe == "ck_dagster/training/lora_recipe.py"
    assert sorted(p.name for p in artifacts.glob("epoch_*")) == [f"epoch_{n}" for n in KEPT]
    for epoch in KEPT:
        folder = artifacts / f"epoch_{epoch}"
        assert (folder / "model-00001-of-00001.safetensors").is_file()  # merged weights
        assert not list(folder.glob("adapter_model*")) + list(folder.glob("adapter_config*"))
        assert {p.name for p in (folder / "adapter_weights").iterdir()} == {
            "adapter_config.json",
            "adapter_model.pt",
            "adapter_model.safetensors",
        }
    assert json.loads((artifacts / FINISHED).read_text()) == {"saved_epochs": list(KEPT)}
    log = read_training_log(artifacts)
    steps = [step for step, _ in log.validation_losses]
    assert steps == [8 * (n + 1) for n in range(EPOCHS)]  # at every epoch's end
    assert log.validation_losses[-1][1] < log.validation_losses[0][1]
    assert len(log.losses) == 8 * EPOCHS


def test_base_plus_adapter_scores_exactly_as_the_merged_weights(
    lora_plans: dict[str, RunPlan], tmp_path: Path
) -> None:
    tuned, control = (eval_spec_for(lora_plans[run]) for run in ("tuned", "base"))
    assert all(t.adapter and t.path == control.targets[0].path for t in tuned.targets)
    # today's path: each epoch folder's merged weights, loaded on their own
    merged = tuned.model_copy(
        update={
            "run_dir": str(tmp_path / "merged"),
            "targets": tuple(
                t.model_copy(update={"path": t.adapter, "adapter": None}) for t in tuned.targets
            ),
        }
    )
    for spec in (tuned, control, merged):
        spec.write()
    # one job process: the control's base model is loaded once and serves both adapters
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ck_dagster.evaluation.job",
            *(str(spec.spec_path) for spec in (control, tuned, merged)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **OFFLINE_ENVIRONMENT},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)

    def samples(spec: EvalSpec, label: str) -> tuple[dict, list[dict], list[str]]:
        results = read_results(Path(spec.run_dir))
        assert results is not None
        (outcome,) = [o for o in results.evaluations if o.label == label]
        log = read_eval_log(str(Path(spec.run_dir) / str(outcome.log)))
        return (
            outcome.metrics,
            [c["prompt_tokens"] for c in model_calls(log)],
            [s.output.completion for s in log.samples or []],
        )

    base = samples(control, "base")
    for target in tuned.targets:
        adapter, weights = samples(tuned, target.label), samples(merged, target.label)
        assert adapter[1:] == weights[1:]  # the same prompt tokens and answers
        for scorer, metrics in adapter[0].items():  # inspect's stderr: summing order
            assert metrics == pytest.approx(weights[0][scorer])
        assert adapter[1] == base[1]
    assert samples(tuned, f"epoch_{EPOCHS - 1}")[2] != base[2]  # the adapter changed answers
