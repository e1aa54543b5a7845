"""The inspect-ai tasks an evaluation runs: the built-in input/output task, or a user's script.

The built-in task turns each row of the data's test split into the conversation training used
(``prompt_messages``: system + user message) with the row's output as target.

A user task script is a Python file with an inspect ``@task`` function (the one named like the
experiment's task, or its only one), called with the task's ``args``. A function that takes
parameters named ``prompt``, ``system_prompt`` or ``data_path`` also gets the run's values
for them (unless ``args`` sets them), so a script can prompt exactly as training did, e.g. by
returning ``input_output(data_path, prompt, system_prompt)`` or calling ``chat_messages``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessage, ChatMessageSystem, ChatMessageUser
from inspect_ai.scorer import Scorer as InspectScorer
from inspect_ai.scorer import exact, includes, match
from inspect_ai.solver import generate
from inspect_ai.util import RegistryInfo, registry_info

from ck_dagster.catalog.parameters import INPUT_PLACEHOLDER
from ck_dagster.errors import CkError
from ck_dagster.evaluation.spec import DEFAULT_SCORERS, TEST_SPLIT, EvalSpec, TaskSpec
from ck_dagster.experiment.data import read_split
from ck_dagster.experiment.schema import Scorer
from ck_dagster.finetune.dataset import prompt_messages

#: ``evaluation.scorers`` names and the inspect scorers they make (with the entry's params).
SCORERS = {"match": match, "includes": includes, "exact": exact}


def chat_messages(input_text: str, *, prompt: str, system_prompt: str) -> list[ChatMessage]:
    """Training's conversation for one input (``prompt_messages``) as inspect messages."""
    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser}
    return [
        kinds[m.role](content=m.text_content)
        for m in prompt_messages(input_text, prompt=prompt, system_prompt=system_prompt)
    ]


def inspect_scorer(entry: Scorer | str | Mapping[str, Any]) -> InspectScorer:
    """The inspect scorer an ``evaluation.scorers`` entry names, made with its params."""
    scorer = (
        entry
        if isinstance(entry, Scorer)
        else Scorer(name=entry)
        if isinstance(entry, str)
        else Scorer.model_validate(entry)
    )
    return SCORERS[scorer.name](**scorer.params)


@task
def input_output(
    data_path: str,
    prompt: str = INPUT_PLACEHOLDER,
    system_prompt: str = "",
    split: str = TEST_SPLIT,
    input_key: str = "input",
    output_key: str = "output",
    scorers: Sequence[Scorer | str | Mapping[str, Any]] = DEFAULT_SCORERS,
    name: str | None = None,
) -> Task:
    """One sample per row of ``split``: training's system + user messages, target the output.

    Scorers default to case-sensitive exact match and includes, each with accuracy and stderr.
    """
    rows = _split(Path(data_path), split)
    samples = [
        Sample(
            id=number,
            target=str(row[output_key]),
            metadata={"input": row[input_key]},
            input=chat_messages(str(row[input_key]), prompt=prompt, system_prompt=system_prompt),
        )
        for number, row in enumerate(rows, start=1)
    ]
    return Task(
        dataset=MemoryDataset(samples, name=f"{Path(data_path).stem}:{split}"),
        solver=generate(),
        scorer=[inspect_scorer(s) for s in scorers],
        name=name,
    )


def _split(path: Path, split: str) -> list[dict[str, Any]]:
    try:
        return read_split(path, split)
    except CkError as exc:
        raise CkError(
            f"{exc}; the built-in task needs a `{split}` split of input/output rows"
        ) from None


def load_task(spec: EvalSpec, task_spec: TaskSpec) -> Task:
    """The inspect Task object for one task of ``spec`` (passed to ``eval()`` as an object:
    a task file's absolute path fails in inspect on Python 3.11)."""
    if task_spec.is_builtin:
        data = spec.data
        return input_output(
            data_path=data.path,
            prompt=task_spec.prompt,
            system_prompt=task_spec.system_prompt,
            split=data.split,
            input_key=data.input_key,
            output_key=data.output_key,
            scorers=[s.model_dump() for s in spec.settings.scorers],
            name=task_spec.name,
        )
    return script_task(task_spec, data_path=spec.data.path)


def script_task(task_spec: TaskSpec, *, data_path: str) -> Task:
    """Import a user task script and call its ``@task`` function with the task's args.

    The script runs from its own folder (relative data paths and sibling imports work as with
    ``inspect eval``).
    """
    assert task_spec.script is not None
    path = Path(task_spec.script)
    context = {
        "prompt": task_spec.prompt,
        "system_prompt": task_spec.system_prompt,
        "data_path": data_path,
    }
    with _in_folder(path.parent):
        function = _task_function(_import(path), task_spec.name, path)
        accepted = inspect.signature(function).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        unknown = [name for name in task_spec.args if name not in accepted and not takes_any]
        if unknown:
            raise CkError(
                f"{path}: task `{function.__name__}` takes no argument "
                f"{', '.join(map(repr, unknown))} (evaluation.tasks[{task_spec.name}]"
                f".args); it takes: {', '.join(accepted) or 'none'}"
            )
        extra = {
            name: value
            for name, value in context.items()
            if name in accepted and name not in task_spec.args
        }
        return function(**task_spec.args, **extra)


@contextmanager
def _in_folder(folder: Path) -> Iterator[None]:
    """Run with ``folder`` as working directory and first on ``sys.path``."""
    previous = os.getcwd()
    sys.path.insert(0, str(folder))
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)
        sys.path.remove(str(folder))


def _import(path: Path) -> ModuleType:
    """Import a task script under a name of its own (scripts of several runs may share a name)."""
    name = f"ck_dagster_eval_task_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise CkError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def _task_info(value: Any) -> RegistryInfo | None:
    """inspect's registry entry for ``value`` when it is a ``@task`` function, else None."""
    try:
        info = registry_info(value)
    except (ValueError, AttributeError):
        return None
    return info if info.type == "task" else None


def _task_function(module: ModuleType, name: str, path: Path) -> Any:
    """The script's ``@task`` function named ``name``, or its only one."""
    found = {
        info.name: value
        for value in vars(module).values()
        if getattr(value, "__module__", None) == module.__name__
        and (info := _task_info(value)) is not None
    }
    if name in found:
        return found[name]
    if len(found) == 1:
        return next(iter(found.values()))
    listed = ", ".join(f"`{n}`" for n in found)
    raise CkError(
        f"{path}: "
        + (
            f"has several @task functions ({listed}) and none is named "
            f"`{name}`: rename the experiment's task after one of them"
            if found
            else "has no @task function: decorate the function "
            "that returns the Task with inspect_ai's @task"
        )
    )
