"""Reading experiment files: the examples pass, every malformed file is refused clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ck_dagster.experiment.load import load_experiment
from ck_dagster.experiment.problems import ExperimentFileError
from ck_dagster.finetune.plan import plan_experiment
from ck_dagster_tests.fixtures.dagster import EXAMPLES

MALFORMED = sorted((Path(__file__).parent / "malformed").glob("*.yaml"))


def check(path: Path) -> None:
    plan_experiment(load_experiment(path))


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
    source = (Path(__file__).parent / "malformed" / "unknown_parameter.yaml").read_text()
    text = (source.replace("type: fine-tuned", "type: finetuned")
                  .replace("name: base", "name: base/x")
                  .replace("epochs: 2", "epochs: 2\n  lr: fast"))
    file = tmp_path / "many.yaml"
    file.write_text(text.replace("../../../examples", str(EXAMPLES)))
    with pytest.raises(ExperimentFileError) as caught:
        check(file)
    problems = caught.value.problems
    assert {".".join(map(str, p.path)) for p in problems} == {"runs.0.type", "runs.1.name"}
    # Structural problems stop before configs are merged; fix them and the rest appear.
    file.write_text(file.read_text().replace("finetuned", "fine-tuned").replace("base/x", "b"))
    with pytest.raises(ExperimentFileError) as caught:
        check(file)
    messages = str(caught.value)
    assert "controls.lr: `lr: 'fast'` must be a number above 0" in messages
    assert "runs[0].parameters.lora_rnk: unknown parameter" in messages


def test_numbers_and_times_read_as_researchers_write_them(tmp_path: Path) -> None:
    source = (EXAMPLES / "cap_rank_sweep.yaml").read_text()
    file = tmp_path / "exp.yaml"
    file.write_text(source.replace("data/words", f"{EXAMPLES}/data/words")
                    .replace('compute: {time: "2:00:00", mem: 48G}', "compute: {time: 2:00:00}"))
    experiment = load_experiment(file)
    run = experiment.run("rank16_lr3e-4")
    assert run.parameters["lr"] == 3e-4 and isinstance(run.parameters["lr"], float)
    assert run.compute is not None and run.compute.time == "2:00:00"
    assert experiment.spec.controls["lr"] == 1e-4
