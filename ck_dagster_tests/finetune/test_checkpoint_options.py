"""Checkpoint and validation options: which recipe runs, which epochs are kept and evaluated,
and every combination that would change nothing refused with its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ck_dagster.evaluation.spec import eval_spec_for
from ck_dagster.experiment.load import load_experiment
from ck_dagster.experiment.problems import ExperimentFileError
from ck_dagster.finetune.config_checks import unknown_key_problems
from ck_dagster.finetune.plan import RunPlan, plan_experiment
from ck_dagster.slurm.script import JobEnvironment
from ck_dagster.training.artifacts import FINISHED, is_complete
from ck_dagster_tests.evaluation.tiny_experiment import LORA_RECIPE, write_experiment

NO_MATRIX = "evaluation: {tasks: [{name: c}]}"
OPTIONS = """  epochs_to_save: "0,2"
  save_adapter_weights_only: true
  validation_during_training: true
  run_val_every_n_steps: 5
"""


@pytest.fixture
def lora(tmp_path: Path, tiny_model_dir: Path, capitalization_data: Path):
    """The tuned run of a LoRA tiny experiment with these extra control lines."""

    def plan(controls: str = "", **kwargs: str) -> RunPlan:
        file = write_experiment(
            tmp_path,
            tiny_model_dir,
            capitalization_data,
            base_recipe=kwargs.pop("base_recipe", LORA_RECIPE),
            controls='  prompt: "{input}"\n' + controls,
            **kwargs,
        )
        return plan_experiment(load_experiment(file), JobEnvironment(), only=["tuned"]).runs[
            "tuned"
        ]

    return plan


def test_options_reach_the_config_and_run_ck_dagsters_recipe(lora, tiny_model_dir: Path) -> None:
    plan = lora(OPTIONS + "  save_last_epoch_only: false\n", evaluation=NO_MATRIX)
    assert plan.recipe == "ck_dagster/training/lora_recipe.py"
    assert plan.job is not None and list(plan.job.command)[:3] == ["tune", "run", plan.recipe]
    assert plan.saved_epochs == (0, 2) and plan.is_lora
    assert plan.config is not None and plan.config.get("dataset_val.field") == "validation"
    plan.run_dir.mkdir(parents=True)
    (plan.run_dir / "finetune.yaml").write_text(plan.finetune_yaml or "")
    assert unknown_key_problems(plan.run_dir / "finetune.yaml", plan.recipe) == []

    spec = eval_spec_for(plan)
    assert [(t.label, t.path, t.adapter) for t in spec.targets] == [
        (f"epoch_{n}", str(tiny_model_dir), str(plan.artifacts_dir / f"epoch_{n}")) for n in (0, 2)
    ]


def test_without_options_torchtunes_recipe_runs_and_every_epoch_is_kept(lora) -> None:
    plan = lora(evaluation=NO_MATRIX)
    assert plan.recipe == "lora_finetune_single_device"
    assert plan.saved_epochs == tuple(range(plan.epochs))
    # LoRA epochs are evaluated as their adapter on the base model, merged weights or not
    assert all(t.adapter and t.path == str(plan.model_path) for t in eval_spec_for(plan).targets)
    full = lora(
        "  save_last_epoch_only: true\n",
        base_recipe="llama3_2/1B_full_single_device",
        evaluation=NO_MATRIX,
    )
    assert full.recipe == "ck_dagster/training/full_recipe.py"
    assert full.saved_epochs == (full.epochs - 1,)
    assert [t.adapter for t in eval_spec_for(full).targets] == [None]


@pytest.mark.parametrize(
    "controls,kwargs,message",
    [
        ('  epochs_to_save: "0,x"\n', {}, 'must be "all", "none", epoch numbers from 0'),
        ("  save_last_epoch_only: true\n  epochs_to_save: [0]\n", {}, "set one of them"),
        ("  run_val_every_n_steps: 5\n", {}, "validation runs only with"),
        (
            "  stash_adapter_weights: true\n",
            {"base_recipe": "llama3_2/1B_full_single_device"},
            "`stash_adapter_weights` is for LoRA runs",
        ),
        ('  epochs_to_save: "6"\n', {"evaluation": NO_MATRIX}, "there is no epoch 6"),
        (
            '  epochs_to_save: "1"\n',
            {},
            "keeps the checkpoints of epochs 1 .epochs_to_save., not of epoch 0",
        ),
        (
            "  validation_during_training: true\n",
            {
                "runs": (
                    "\n  - {name: tuned, type: fine-tuned, model: tiny-llama, compute: {gpus: 2}}"
                )
            },
            "needs ck_dagster's single-device recipe",
        ),
        ("  custom_recipe: 'a b'\n", {}, "must be a Python module path"),
        ("  custom_recipe: missing.py\n", {}, "recipe file"),
    ],
)
def test_options_that_would_change_nothing_are_refused(
    lora, controls: str, kwargs: dict, message: str
) -> None:
    with pytest.raises(ExperimentFileError, match=message) as raised:
        lora(controls, **kwargs)
    assert all(p.line for p in raised.value.problems)


def test_a_custom_recipe_module_or_file_is_what_tune_run_runs(lora, tmp_path: Path) -> None:
    assert lora("  custom_recipe: my_pkg.my_recipe\n").recipe == "my_pkg/my_recipe.py"
    (tmp_path / "recipes_of_mine").mkdir()
    recipe = tmp_path / "recipes_of_mine" / "val_recipe.py"
    recipe.write_text("# a recipe\n")
    plan = lora("  custom_recipe: recipes_of_mine/val_recipe.py\n")
    assert plan.recipe == "val_recipe.py"
    assert f'export PYTHONPATH={recipe.parent}"${{PYTHONPATH:+:$PYTHONPATH}}"' in (
        plan.slurm_script or ""
    )
    before = plan.spec_version
    recipe.write_text("# a recipe, edited\n")
    assert lora("  custom_recipe: recipes_of_mine/val_recipe.py\n").spec_version != before


def test_adoption_expects_the_kept_epochs(tmp_path: Path) -> None:
    (tmp_path / "epoch_2").mkdir()
    (tmp_path / "epoch_2" / "adapter_model.pt").write_bytes(b"x")
    assert is_complete(tmp_path, (2,)) and not is_complete(tmp_path, (0, 2))
    assert not is_complete(tmp_path, ())  # epochs_to_save: none, and the recipe not finished
    (tmp_path / FINISHED).write_text("{}")
    assert is_complete(tmp_path, ())


def test_options_that_ask_for_nothing_keep_torchtunes_recipe_on_any_gpus(lora) -> None:
    """v1 files say ``validation_during_training: false``: that asks for nothing ck_dagster's
    recipe adds, so a 2-GPU run keeps torchtune's distributed recipe, without the keys."""
    plan = lora(
        '  validation_during_training: false\n  epochs_to_save: "all"\n',
        runs="\n  - {name: tuned, type: fine-tuned, model: tiny-llama, compute: {gpus: 2}}",
    )
    assert plan.recipe == "lora_finetune_distributed"
    assert plan.config is not None
    assert "validation_during_training" not in plan.config.config
    assert "epochs_to_save" not in plan.config.config
