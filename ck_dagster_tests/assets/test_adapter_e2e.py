"""Through real SLURM, Dagster, ``tune run`` and inspect-ai: a LoRA run with a custom recipe
file (built on ck_dagster's), validation loss, adapter-only epochs and ``epochs_to_save``;
only the kept epochs are written, adopted and evaluated as adapters on the base model."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance

from ck_dagster.experiment.load import load_experiment
from ck_dagster_tests.assets.test_evaluation_e2e import materialize, metadata
from ck_dagster_tests.evaluation.tiny_experiment import (
    EPOCHS,
    LORA_RECIPE,
    PROMPTS,
    trimmed_data,
    write_experiment,
)
from ck_dagster_tests.fixtures.dagster import run_command

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

RECIPE = """
from ck_dagster.training.lora_recipe import LoRARecipe
from ck_dagster.training.recipe_features import run_recipe


class MyRecipe(LoRARecipe):
    def setup(self, cfg):
        super().setup(cfg)
        print("my recipe: set up", flush=True)


if __name__ == "__main__":
    run_recipe(MyRecipe)
"""
CONTROLS = f"""{PROMPTS}
  custom_recipe: my_recipes/my_recipe.py
  gradient_accumulation_steps: 1
  max_steps_per_epoch: 4
  num_warmup_steps: 2
  epochs_to_save: "0,2"
  save_adapter_weights_only: true
  validation_during_training: true
  run_val_every_n_steps: 2
"""
EVALUATION = """
evaluation:
  max_tokens: 8
  tasks: [{name: capitalization}]
"""


def test_adapter_only_kept_epochs_with_validation_train_and_evaluate(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data, slurm_cluster
) -> None:
    (tmp_path / "my_recipes").mkdir()
    (tmp_path / "my_recipes" / "my_recipe.py").write_text(RECIPE)
    data = trimmed_data(capitalization_data, tmp_path)
    file = write_experiment(
        tmp_path,
        tiny_model_dir,
        data,
        controls=CONTROLS,
        runs="\n  - {name: tuned, type: fine-tuned, model: tiny-llama}\n",
        evaluation=EVALUATION,
        base_recipe=LORA_RECIPE,
    )
    run_command(["ck-dagster", "register", file])
    key = "tiny_eval/tuned"
    log = materialize(
        "--select", "recipe_config,run_config,checkpoint,eval_log", "--partition", key
    )
    assert f"{key}: submitted job" in log and f"eval {key}" in log

    artifacts = load_experiment(file).run_dir("tuned") / "artifacts"
    assert sorted(p.name for p in artifacts.glob("epoch_*")) == ["epoch_0", "epoch_2"]
    for epoch in ("epoch_0", "epoch_2"):
        names = {p.name for p in (artifacts / epoch).iterdir()}
        assert {"adapter_model.pt", "adapter_config.json"} <= names
        assert not [n for n in names if n.startswith("model")]  # no merged weights
    (job_log,) = artifacts.glob("slurm-*.out")
    assert "my recipe: set up" in job_log.read_text()
    with DagsterInstance.get() as instance:
        trained = metadata(instance, "checkpoint", key)
        evaluated = metadata(instance, "eval_log", key)
    assert (trained["epochs_saved"], trained["epochs_kept"]) == (2, "0, 2")
    steps = [row.data["step"] for row in trained["validation_curve"].records]
    assert steps == list(range(2, 4 * EPOCHS + 1, 2)) and trained["final_val_loss"] > 0
    assert {k for k in evaluated if k.endswith("/accuracy")} == {
        "capitalization/epoch_0/accuracy",
        "capitalization/epoch_2/accuracy",
    }
    assert evaluated["errored_samples"] == 0 and evaluated["samples"] == 2 * 25

    # a second materialization adopts the kept epochs: nothing is submitted again
    again = materialize("--select", "checkpoint", "--partition", key)
    assert "submitted job" not in again and "adopted" in again
