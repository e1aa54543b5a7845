"""Reading experiment files: the examples pass, every malformed file is refused clearly."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ck_dagster.experiment.load import load_experiment
from ck_dagster.experiment.problems import ExperimentFileError, format_path
from ck_dagster.finetune.plan import plan_experiment, plan_experiment_file
from ck_dagster_tests.fixtures.dagster import EXAMPLES

pytestmark = pytest.mark.unit

MALFORMED = sorted((Path(__file__).parent / "malformed").glob("*.yaml"))


def check(path: Path) -> None:
    """What ``ck-dagster register`` and ``dry-run`` do with a file before anything is written."""
    plan_experiment_file(path)


@pytest.mark.parametrize("name", ["cap_rank_sweep.yaml", "model_comparison.yaml"])
def test_examples_are_valid(name: str) -> None:
    experiment = load_experiment(EXAMPLES / name)
    plan = plan_experiment(experiment)
    assert set(plan.runs) == {run.name for run in experiment.runs}


def test_corpus_is_large_enough() -> None:
    assert len(MALFORMED) >= 25


@pytest.mark.parametrize("path", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_malformed_file_is_refused_with_its_own_message(path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(ExperimentFileError) as caught:
        check(path)
    message = str(caught.value)
    assert expected in message
    assert message.startswith(f"{path}: ")
    assert "nothing was registered or written" in message
    problem_lines = message.splitlines()[1:]
    assert problem_lines, message
    if path.stem != "empty":  # an empty file has no line to point at
        assert all(re.match(rf"  {re.escape(str(path))}:\d+: ", line) for line in problem_lines)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Structure, cross-references and merged configs are all checked in one pass."""
    source = (Path(__file__).parent / "malformed" / "unknown_parameter.yaml").read_text()
    text = (
        source.replace("name: cap_test", "name: cap test")
        .replace("type: fine-tuned", "type: fine-tuned\n    lr: 1e-3")
        .replace("name: base", "name: rank4")
        .replace("epochs: 2", "epochs: 2\n  lr: fast")
        .replace("experiment:", "base_recipe: x\nexperiment:")
        + "  matrix:\n    - {run: rank5}\n"
    )
    file = tmp_path / "many.yaml"
    file.write_text(text.replace("../../../examples", str(EXAMPLES)))
    with pytest.raises(ExperimentFileError) as caught:
        check(file)
    problems = caught.value.problems
    assert [format_path(p.path) for p in problems] == [
        "base_recipe",  # unknown key, in the wrong place
        "experiment.name",  # unsafe name
        "controls.lr",  # bad value, found when configs are merged
        "runs[0].lr",  # unknown key, in the wrong place
        "runs[0].parameters.lora_rnk",  # unknown parameter, found when configs are merged
        "runs[1].name",  # duplicate run name
        "evaluation.matrix[0].run",  # unknown run
    ], caught.value
    lines = [p.line for p in problems]
    assert lines == sorted(lines) and None not in lines
    message = str(caught.value)
    assert "base_recipe: unknown key `base_recipe` (it belongs under `controls:`)" in message
    assert (
        "runs[0].lr: unknown key `lr` (training parameters go under `runs[0].parameters:`)"
        in message
    )
    assert "controls.lr: `lr: 'fast'` must be a number above 0" in message
    assert "unknown run `rank5` (did you mean `rank4`?)" in message


def test_a_run_refused_by_the_schema_still_has_its_parameters_checked(tmp_path: Path) -> None:
    source = (Path(__file__).parent / "malformed" / "unknown_parameter.yaml").read_text()
    file = tmp_path / "exp.yaml"
    file.write_text(
        source.replace("../../../examples", str(EXAMPLES)).replace(
            "type: fine-tuned", "type: finetuned"
        )
    )
    with pytest.raises(ExperimentFileError) as caught:
        check(file)
    # every problem at once: the wrong type, and the parameter that is wrong whatever the type
    assert [format_path(p.path) for p in caught.value.problems] == [
        "runs[0].type",
        "runs[0].parameters.lora_rnk",
    ]


def test_a_run_naming_an_unknown_model_still_has_its_values_checked(tmp_path: Path) -> None:
    text = (
        (EXAMPLES / "cap_rank_sweep.yaml")
        .read_text()
        .replace(
            "    model: Llama-3.2-1B-Instruct\n    parameters: {lora_rank: 4}",
            "    model: Llama-3.2-1B\n    parameters: {lora_rank: 0}",
        )
    )
    file = tmp_path / "exp.yaml"
    file.write_text(text.replace("path: data/", f"path: {EXAMPLES}/data/"))
    with pytest.raises(ExperimentFileError) as caught:
        check(file)
    assert [(format_path(p.path), p.message) for p in caught.value.problems] == [
        ("runs[0].model", "run `rank4` names unknown model `Llama-3.2-1B`"),
        (
            "runs[0].parameters.lora_rank",
            "`lora_rank: 0` must be a whole number from 1 to 8192 (no model is wider)",
        ),
    ]


@pytest.mark.parametrize(
    ("key", "parent", "fix"),
    [
        ("dir", "", "it belongs under `experiment:`"),
        ("epochs", "", "it belongs under `controls:` (or a run's `parameters:`)"),
        ("tasks", "", "it belongs under `evaluation:`"),
        ("time", "runs[0]", "it belongs under `runs[0].compute:`"),
        ("path", "runs[0]", "it belongs under `models.base[]:`"),
    ],
)
def test_a_key_at_the_wrong_level_says_where_it_goes(
    tmp_path: Path, key: str, parent: str, fix: str
) -> None:
    source = (Path(__file__).parent / "malformed" / "unknown_parameter.yaml").read_text()
    anchor = "experiment:" if not parent else "    type: fine-tuned"
    text = source.replace(
        anchor, f"{anchor}\n{'    ' if parent else ''}{key}: 1" if parent else f"{key}: 1\n{anchor}"
    )
    file = tmp_path / "exp.yaml"
    file.write_text(text.replace("../../../examples", str(EXAMPLES)))
    with pytest.raises(ExperimentFileError) as caught:
        check(file)
    assert f"unknown key `{key}` ({fix})" in str(caught.value)


def test_numbers_and_times_read_as_researchers_write_them(tmp_path: Path) -> None:
    source = (EXAMPLES / "cap_rank_sweep.yaml").read_text()
    file = tmp_path / "exp.yaml"
    file.write_text(
        source.replace("data/words", f"{EXAMPLES}/data/words").replace(
            'compute: {time: "2:00:00", mem: 48G}', "compute: {time: 2:00:00}"
        )
    )
    experiment = load_experiment(file)
    run = experiment.run("rank16_lr3e-4")
    assert run.parameters["lr"] == 3e-4 and isinstance(run.parameters["lr"], float)
    assert run.compute is not None and run.compute.time == "2:00:00"
    assert experiment.spec.controls["lr"] == 1e-4


def test_a_split_is_needed_only_by_what_reads_it(tmp_path: Path) -> None:
    """A data file without train rows is refused for fine-tuned runs (the malformed corpus)
    but not for an experiment of control runs, which never train."""
    malformed = Path(__file__).parent / "malformed"
    shutil.copytree(malformed / "data", tmp_path / "data")
    fine_tuned = "  - name: rank4\n    type: fine-tuned\n"
    text = (malformed / "data_without_train.yaml").read_text()
    controls_only = re.sub(rf"{fine_tuned}(    .*\n)*", "", text)
    assert fine_tuned in text and "type: fine-tuned" not in controls_only
    (tmp_path / "controls.yaml").write_text(controls_only)
    assert [run.name for run in load_experiment(tmp_path / "controls.yaml").runs] == ["base"]
