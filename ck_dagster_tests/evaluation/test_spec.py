"""EvalSpec: targets, tasks, prompts and settings of one run's evaluation, and its version."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ck_dagster.evaluation.spec import EvalSpec, eval_spec_for
from ck_dagster.experiment.problems import ExperimentFileError
from ck_dagster_tests.evaluation.tiny_experiment import EPOCHS, PROMPT, SYSTEM_PROMPT, plan_run

Write = Callable[..., Path]
TWO_TASKS = """
evaluation:
  tasks:
    - {name: first}
    - {name: second, prompt: "Word: {input}", system_prompt: ""}
"""


def spec(file: Path, run: str = "tuned") -> EvalSpec:
    return eval_spec_for(plan_run(file, run))


def test_every_epoch_and_task_by_default_and_the_base_model_for_a_control_run(
    experiment: Write, tiny_model_dir: Path
) -> None:
    file = experiment(evaluation=TWO_TASKS)
    tuned, base = spec(file), spec(file, "base")

    assert [(t.label, t.tasks) for t in tuned.targets] == [
        (f"epoch_{n}", ("first", "second")) for n in range(EPOCHS)
    ]
    assert tuned.targets[3].path == str(file.parent / "runs" / "tuned" / "artifacts" / "epoch_3")
    assert [(t.label, t.path, t.tasks) for t in base.targets] == [
        ("base", str(tiny_model_dir), ("first", "second"))
    ]
    assert base.expected_logs() == [("first", "base"), ("second", "base")]
    assert base.log_dir("first", "base") == file.parent / "runs/base/eval/first/base/logs"


def test_matrix_entries_of_a_run_add_up(experiment: Write) -> None:
    tuned = spec(
        experiment(
            evaluation=TWO_TASKS
            + """
  matrix:
    - {run: tuned, tasks: [second], epochs: [4]}
    - {run: tuned, tasks: [first], epochs: [4, 1]}
    - {run: base, tasks: [first]}
"""
        )
    )
    assert tuned.expected_logs() == [
        ("first", "epoch_1"),
        ("first", "epoch_4"),
        ("second", "epoch_4"),
    ]
    assert [t.name for t in tuned.tasks] == ["first", "second"]


def test_prompts_are_the_runs_with_per_task_overrides(experiment: Write) -> None:
    tuned = spec(experiment(evaluation=TWO_TASKS))
    assert [(t.prompt, t.system_prompt) for t in tuned.tasks] == [
        (PROMPT, SYSTEM_PROMPT),
        ("Word: {input}", ""),
    ]
    assert tuned.model.tokenizer["max_seq_len"] == 256


@pytest.mark.parametrize(
    "controls,parameters,expected",
    [
        ("", "{}", ("{input}", "")),
        (
            '  prompt: "Say {input}"\n  dataset.system_prompt: "Be brief."',
            "{}",
            ("Say {input}", "Be brief."),
        ),
        (
            '  prompt: "Say {input}"',
            '{prompt: "Run says {input}", system_prompt: "Run."}',
            ("Run says {input}", "Run."),
        ),
    ],
)
def test_control_runs_take_prompts_as_training_would(
    experiment: Write, controls: str, parameters: str, expected: tuple[str, str]
) -> None:
    base = spec(
        experiment(
            controls=controls,
            runs=f"""
  - {{name: tuned, type: fine-tuned, model: tiny-llama}}
  - {{name: base, type: control, model: tiny-llama, parameters: {parameters}}}
""",
        ),
        "base",
    )
    assert [(t.prompt, t.system_prompt) for t in base.tasks] == [expected]


def test_settings_and_model_loading(experiment: Write) -> None:
    tuned = spec(
        experiment(
            evaluation="""
evaluation:
  temperature: 0.7
  max_tokens: 5
  seed: 3
  max_connections: 4
  scorers: [exact, {name: includes, params: {ignore_case: true}}]
  tasks: [{name: capitalization}]
"""
        )
    )
    assert tuned.settings.generate_args() == {
        "temperature": 0.7,
        "max_tokens": 5,
        "seed": 3,
        "max_connections": 4,
    }
    assert tuned.settings.do_sample  # a temperature above 0 means sampling
    assert [(s.name, s.params) for s in tuned.settings.scorers] == [
        ("exact", {}),
        ("includes", {"ignore_case": True}),
    ]
    model = tuned.model
    assert (model.builder, model.model_type, model.device, model.dtype) == (
        "ck_dagster.tiny.model.tiny_llama",
        "LLAMA3_2",
        "cpu",
        "fp32",
    )
    assert tuned.data.rows == 100 and tuned.data.split == "test"


def test_spec_round_trips_through_its_json_file(experiment: Write) -> None:
    tuned = spec(experiment())
    assert tuned.write() and not tuned.write()  # unchanged: the file is left alone
    document = json.loads(tuned.spec_path.read_text())
    assert document["version"] == tuned.version
    again = EvalSpec.read(tuned.spec_path)
    assert again == tuned and again.version == tuned.version


def test_version_changes_exactly_when_the_evaluation_would(
    experiment: Write, tmp_path: Path, capitalization_data: Path
) -> None:
    script = tmp_path / "task.py"
    script.write_text("# a task\n")
    data = tmp_path / "data.json"
    data.write_bytes(capitalization_data.read_bytes())
    tasks = f"""
evaluation:
  max_tokens: 12
  tasks: [{{name: capitalization}}, {{name: mine, script: {script}, args: {{n: 1}}}}]
"""
    reference = spec(experiment(data=data, evaluation=tasks)).version

    def version(**kwargs: str) -> str:
        return spec(experiment(**{"data": data, "evaluation": tasks, **kwargs})).version

    unrelated = """
  - {name: tuned, type: fine-tuned, model: tiny-llama}
  - {name: other, type: fine-tuned, model: tiny-llama, parameters: {lr: 1e-2}}
"""
    assert version() == reference
    assert version(runs=unrelated) == reference
    assert version(evaluation=tasks.replace("max_tokens: 12", "max_tokens: 13")) != reference
    assert version(evaluation=tasks.replace("{n: 1}", "{n: 2}")) != reference
    assert version(evaluation=tasks + "  temperature: 0.5\n") != reference
    assert version(evaluation=tasks + "  matrix: [{run: tuned, epochs: [0]}]\n") != reference
    assert version(controls='  prompt: "Cap {input}"') != reference
    script.write_text("# a task, edited\n")
    assert version() != reference
    reference = version()
    rows = json.loads(data.read_text())
    rows["test"][0]["output"] = "Changed"
    data.write_text(json.dumps(rows))
    assert version() != reference


@pytest.mark.parametrize(
    "evaluation,controls,message",
    [
        ("", "", "has no `evaluation:` section"),
        (
            "evaluation: {tasks: [{name: c, prompt: 'no placeholder'}]}",
            "",
            "of task `c` has no {input}",
        ),
        (
            "evaluation: {tasks: [{name: c}]}",
            '  epochs_to_save: "none"',
            "epochs_to_save keeps no epoch, so there is nothing to evaluate",
        ),
    ],
)
def test_experiments_that_cannot_be_evaluated_are_refused_with_the_field(
    experiment: Write, evaluation: str, controls: str, message: str
) -> None:
    with pytest.raises(ExperimentFileError, match=message) as raised:
        spec(experiment(evaluation=evaluation, controls=controls))
    assert all(p.line for p in raised.value.problems)


def test_the_builtin_task_needs_a_test_split(experiment: Write, tmp_path: Path) -> None:
    data = tmp_path / "no_test.json"
    data.write_text(json.dumps({"train": [{"input": "a", "output": "A"}] * 8, "test": []}))
    with pytest.raises(ExperimentFileError, match="no rows in a `test` (list|split)"):
        spec(experiment(data=data))
    # the same check, for a data file the controls set instead (read when the run is planned)
    file = experiment(controls=f"  dataset.data_files: {data}")
    refused = r"run `tuned`: data file .* `test` list"
    with pytest.raises(ExperimentFileError, match=refused) as raised:
        spec(file)
    assert "or give the task a `script`" in str(raised.value)


def test_the_version_covers_the_modules_a_task_script_imports_from_its_folders(
    experiment: Write, tmp_path: Path
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text("from .score import scorer\n")
    (tmp_path / "lib" / "score.py").write_text("import json\nfrom . import words\n")
    (tmp_path / "lib" / "words.py").write_text("WORDS = ['a']\n")
    (tmp_path / "unused.py").write_text("")
    (tmp_path / "task.py").write_text("import os\nimport lib.score\nfrom lib import words\n")
    file = experiment(evaluation="evaluation: {tasks: [{name: mine, script: task.py}]}\n")
    before = spec(file)
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in before.tasks[0].imports) == [
        "lib/__init__.py",
        "lib/score.py",
        "lib/words.py",
    ]  # installed modules are not followed
    assert before.changed_inputs() == []
    (tmp_path / "lib" / "words.py").write_text("WORDS = ['b']\n")
    assert before.changed_inputs() == [tmp_path / "lib" / "words.py"]
    after = spec(file).version
    assert after != before.version
    (tmp_path / "unused.py").write_text("x = 1\n")  # not imported: no change
    assert spec(file).version == after


def test_the_version_covers_the_tokenizer_files_of_the_model_evaluated(
    experiment: Write, tmp_path: Path, tiny_model_dir: Path
) -> None:
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    file = experiment(model_dir=model)
    tokenizer = model / "original" / "tokenizer.model"
    for run in ("tuned", "base"):  # the tiny model's tokenizer has two files
        assert sorted(spec(file, run).tokenizer_files) == [
            str(model / "original" / "tokenizer.model"),
            str(model / "tokenizer.json"),
        ]
    before = {run: spec(file, run).version for run in ("tuned", "base")}
    tokenizer.write_bytes(tokenizer.read_bytes() + b"\n")
    assert all(spec(file, run).version != before[run] for run in ("tuned", "base"))
