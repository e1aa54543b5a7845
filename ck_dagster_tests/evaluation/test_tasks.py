"""The built-in input/output task and user task scripts, as the job hands them to inspect."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from inspect_ai._util.registry import registry_info

from ck_dagster.errors import CkError
from ck_dagster.evaluation.spec import TaskSpec, eval_spec_for
from ck_dagster.evaluation.tasks import load_task, script_task
from ck_dagster_tests.evaluation.tiny_experiment import PROMPT, SYSTEM_PROMPT, plan_run

SCRIPT = """
import json
from pathlib import Path
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from ck_dagster.evaluation.tasks import chat_messages

@task
def words(count: int, prompt: str, suffix: str = "") -> Task:
    rows = json.loads(Path("rows.json").read_text())[:count]  # relative to this file
    return Task(dataset=[Sample(input=chat_messages(word + suffix, prompt=prompt,
                                                    system_prompt=""), target=word.upper())
                         for word in rows])

@task
def other() -> Task:
    return Task(dataset=[Sample(input="x", target="y")])
"""


def test_builtin_task_asks_the_training_conversation_of_every_test_row(
    experiment: Callable[..., Path], capitalization_data: Path
) -> None:
    spec = eval_spec_for(plan_run(experiment(), "tuned"))
    task = load_task(spec, spec.tasks[0])
    rows = json.loads(capitalization_data.read_text())["test"]

    assert task.name == "capitalization"
    assert len(task.dataset) == len(rows) == 100
    first = task.dataset[0]
    assert [(m.role, m.text) for m in first.input] == [
        ("system", SYSTEM_PROMPT),
        ("user", PROMPT.replace("{input}", rows[0]["input"])),
    ]
    assert (first.id, first.target) == (1, rows[0]["output"])
    assert [registry_info(s).name.split("/")[-1] for s in task.scorer] == ["match", "includes"]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "rows.json").write_text(json.dumps(["apple", "pear", "fig"]))
    (folder / "my_tasks.py").write_text(SCRIPT)
    return folder / "my_tasks.py"


def task_spec(script: Path, name: str = "words", **args: object) -> TaskSpec:
    return TaskSpec(
        name=name, script=str(script), args=args, prompt="Say {input}", system_prompt="Be brief."
    )


@pytest.mark.unit
def test_user_script_gets_its_args_and_the_runs_prompt(script: Path) -> None:
    task = script_task(task_spec(script, count=2, suffix="s"), data_path="/data.json")
    assert [(s.input[-1].text, s.target) for s in task.dataset] == [
        ("Say apples", "APPLE"),
        ("Say pears", "PEAR"),
    ]


@pytest.mark.unit
def test_user_script_picks_its_only_task_or_the_one_named_like_the_experiments(
    script: Path,
) -> None:
    assert script_task(task_spec(script, name="other"), data_path="").dataset[0].target == "y"
    with pytest.raises(CkError, match="several @task functions .* none is named `third`"):
        script_task(task_spec(script, name="third"), data_path="")
    single = script.with_name("single.py")
    single.write_text(SCRIPT.split("@task\ndef other")[0])
    assert len(script_task(task_spec(single, name="any", count=3), data_path="").dataset) == 3


@pytest.mark.unit
def test_user_script_errors_say_what_to_fix(script: Path, tmp_path: Path) -> None:
    with pytest.raises(CkError, match="takes no argument 'limit'.*it takes: count, prompt"):
        script_task(task_spec(script, count=1, limit=3), data_path="")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(CkError, match="has no @task function"):
        script_task(task_spec(empty), data_path="")
