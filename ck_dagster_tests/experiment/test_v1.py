"""A cruijff_kit v1 ``experiment_summary.yaml`` loads as written, and every field does what it
says: each field's effect is asserted on the files ck_dagster writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ck_dagster.experiment.load import load_experiment
from ck_dagster.experiment.problems import ExperimentFileError
from ck_dagster.finetune.plan import plan_experiment, plan_experiment_file
from ck_dagster_tests.fixtures.experiments import write_v1_experiment


def refusal(folder: Path, model_dir: Path, data: Path, replace: dict[str, str]) -> str:
    """The message that refuses the v1 file edited by ``replace``."""
    file = write_v1_experiment(folder, model_dir, data, replace=replace)
    with pytest.raises(ExperimentFileError) as caught:
        plan_experiment_file(file)
    return str(caught.value)


@pytest.fixture()
def v1_file(tmp_path: Path, tiny_model_dir: Path, capitalization_data: Path) -> Path:
    return write_v1_experiment(tmp_path, tiny_model_dir, capitalization_data)


def test_a_v1_file_loads_as_written(v1_file: Path, tmp_path: Path) -> None:
    experiment = load_experiment(v1_file)
    plan = plan_experiment(experiment)
    assert experiment.dir == tmp_path / "ck-projects" / "v1_rank_sweep"
    assert set(plan.runs) == {"tiny-llama_rank4", "tiny-llama_rank8", "tiny-llama_base"}
    rank8 = plan.runs["tiny-llama_rank8"]
    assert rank8.config is not None
    # parameters.learning_rate is the learning rate
    assert rank8.config.get("optimizer.lr") == 2e-3
    assert rank8.config.get("model.lora_rank") == 8
    assert experiment.spec.data.training.label == "words_capitalization"


def test_the_names_accepted_before_keep_working(
    tmp_path: Path, tiny_model_dir: Path, capitalization_data: Path
) -> None:
    file = write_v1_experiment(
        tmp_path,
        tiny_model_dir,
        capitalization_data,
        replace={
            "  directory: ": "  dir: ",
            "    label: ": "    dataset_label: ",
            "      learning_rate: 2e-3": "      lr: 2e-3",
            "    mig: false\n": "",
            'compute: {time: "0:30:00"}': 'compute: {time: "0:30:00", mig: false}',
        },
    )
    plan = plan_experiment_file(file)
    assert plan.experiment.dir == tmp_path / "ck-projects" / "v1_rank_sweep"
    assert plan.experiment.spec.data.training.label == "words_capitalization"
    assert plan.runs["tiny-llama_rank8"].config.get("optimizer.lr") == 2e-3


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "  directory: ",
            "  directroy: ",
            "experiment.directroy: unknown key `directroy` (did you mean `directory`?)",
        ),
        (
            "      learning_rate: 1e-3",
            "      learning_rat: 1e-3",
            "unknown parameter `learning_rat` (did you mean `learning_rate`?)",
        ),
        (
            "      learning_rate: 1e-3",
            "      learning_rate: 1e-3\n      lr: 1e-3",
            "`lr` and `learning_rate` both set `optimizer.lr` (keep one of them)",
        ),
        (
            "  directory: ",
            "  dir: x\n  directory: ",
            "experiment.dir: `dir` is another name of `directory`, which is also given (keep one",
        ),
        ("    label: ", "    lable: ", "unknown key `lable` (did you mean `label`?)"),
        (
            "  base_directory: ",
            "  base_dir: ",
            "unknown key `base_dir` (did you mean `base_directory`?)",
        ),
        (
            'checkpoint_pattern: "ck-out-{run_name}/epoch_{N}"',
            'checkpoint_pattern: "out/epoch_{N}"',
            "output.checkpoint_pattern: must be a folder with {run_name}",
        ),
        (
            "  epochs: 2\n",
            "  epochs: 2\n  output_dir: /elsewhere\n",
            "controls.output_dir: `output_dir` is where ck_dagster keeps the run's checkpoints",
        ),
    ],
)
def test_v1_misspellings_are_refused_with_a_fix(
    tmp_path: Path,
    tiny_model_dir: Path,
    capitalization_data: Path,
    old: str,
    new: str,
    expected: str,
) -> None:
    assert expected in refusal(tmp_path, tiny_model_dir, capitalization_data, {old: new})


def test_outputs_go_under_base_directory_and_configs_stay_in_directory(
    v1_file: Path, tmp_path: Path
) -> None:
    plan = plan_experiment_file(v1_file)
    rank4 = plan.runs["tiny-llama_rank4"]
    outputs = tmp_path / "ck-outputs" / "v1_rank_sweep" / "ck-out-tiny-llama_rank4"
    assert rank4.run_dir == tmp_path / "ck-projects" / "v1_rank_sweep" / "tiny-llama_rank4"
    assert rank4.artifacts_dir == outputs
    assert yaml.safe_load(rank4.finetune_yaml)["output_dir"] == str(outputs)
    assert f"#SBATCH --output={outputs}/slurm-%j.out" in rank4.slurm_script
    assert f"--chdir={rank4.run_dir}" in rank4.slurm_script


def test_evaluation_system_prompt_must_match_training(
    tmp_path: Path, tiny_model_dir: Path, capitalization_data: Path
) -> None:
    message = refusal(
        tmp_path,
        tiny_model_dir,
        capitalization_data,
        {
            'evaluation:\n  system_prompt: "You are a helpful assistant."': (
                'evaluation:\n  system_prompt: "Be terse."'
            )
        },
    )
    assert "evaluation.system_prompt: differs from the system prompt the runs train with" in message


def test_wandb_project_reaches_the_metric_logger(v1_file: Path) -> None:
    plan = plan_experiment_file(v1_file)
    config = yaml.safe_load(plan.runs["tiny-llama_rank8"].finetune_yaml)
    outputs = config["output_dir"]
    assert config["metric_logger"] == {
        "_component_": "ck_dagster.training.metric_logging.DiskAndWandBLogger",
        "log_dir": f"{outputs}/logs",
        "project": "cruijff_kit_tests",
        "name": "tiny-llama_rank8",
        "wandb_dir": outputs,
    }
    assert "export WANDB_MODE=offline" in plan.runs["tiny-llama_rank8"].slurm_script


def test_informational_fields_are_shown_as_the_runs_metadata(v1_file: Path) -> None:
    experiment = load_experiment(v1_file)
    assert experiment.information(experiment.run("tiny-llama_rank4")) == {
        "experiment.project": "capitalization",
        "experiment.question": "Does LoRA rank change how well a tiny model learns to "
        "capitalize words?",
        "experiment.hypothesis": "Rank 8 learns faster than rank 4.",
        "experiment.purpose": "Check that a v1 file loads and materializes with no edit.",
        "experiment.date": "2026-12-01",
        "dataset": "words_capitalization",
        "data.size_kb": 20,
        "model.size_gb": 0.01,
    }


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "  lora_rank: [4, 8]",
            "  lora_rank: [4, 8, 16]",
            "variables.lora_rank[2]: no run uses "
            "lora_rank = 16 (remove it, or add a run that uses it)",
        ),
        (
            "      learning_rate: 2e-3",
            "      learning_rate: 3e-3",
            "run `tiny-llama_rank8` uses "
            "learning_rate = 0.003, which `variables.learning_rate` does not list",
        ),
        (
            "  learning_rate: [1e-3, 2e-3]\n",
            "",
            "the runs vary `learning_rate` (0.001, 0.002), which `variables` does not list",
        ),
        ("      lora_rank: 4\n", "", "run `tiny-llama_rank4` does not set `lora_rank`"),
    ],
)
def test_variables_are_checked_against_what_the_runs_vary(
    tmp_path: Path,
    tiny_model_dir: Path,
    capitalization_data: Path,
    old: str,
    new: str,
    expected: str,
) -> None:
    assert expected in refusal(tmp_path, tiny_model_dir, capitalization_data, {old: new})


def test_variables_may_use_another_name_of_the_same_setting(
    tmp_path: Path, tiny_model_dir: Path, capitalization_data: Path
) -> None:
    file = write_v1_experiment(
        tmp_path,
        tiny_model_dir,
        capitalization_data,
        replace={"  learning_rate: [1e-3, 2e-3]": "  lr: [1e-3, 2e-3]"},
    )
    assert list(load_experiment(file).spec.variables) == ["lora_rank", "lr"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      train: 400",
            "      train: 399",
            "data.training.splits.train: says 399 rows, but the `train` split of",
        ),
        ("      test: 100", "      test: 10", "the `test` split of"),
    ],
)
def test_splits_are_checked_against_the_data(
    tmp_path: Path,
    tiny_model_dir: Path,
    capitalization_data: Path,
    old: str,
    new: str,
    expected: str,
) -> None:
    assert expected in refusal(tmp_path, tiny_model_dir, capitalization_data, {old: new})


def test_json_without_a_train_split_is_refused_when_the_file_is_read(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "no_train.json"
    data.write_text('{"training": [], "validation": [], "test": [{"input": "a", "output": "A"}]}')
    file = write_v1_experiment(
        tmp_path,
        tiny_model_dir,
        data,
        replace={"    splits:\n      train: 400\n      validation: 50\n      test: 100\n": ""},
    )
    with pytest.raises(ExperimentFileError) as caught:
        load_experiment(file)
    assert (
        f"data.training.path: data file {data} has no rows in a `train` list, and fine-tuned "
        "runs train on it (add a `train` list of rows)" in str(caught.value)
    )


def test_a_wandb_project_w_and_b_would_refuse_is_refused_here(
    tmp_path: Path, tiny_model_dir: Path, capitalization_data: Path
) -> None:
    message = refusal(
        tmp_path,
        tiny_model_dir,
        capitalization_data,
        {'wandb_project: "cruijff_kit_tests"': 'wandb_project: "tests/v1"'},
    )
    assert "output.wandb_project: is not a W&B project name" in message
