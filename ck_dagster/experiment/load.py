"""Read an experiment file and check it: every problem at once, each with line, field and fix."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ValidationError

from ck_dagster.catalog.models import MODELS
from ck_dagster.catalog.parameters import CONTROL_KEYS, PARAMETERS, config_path
from ck_dagster.errors import CkError, did_you_mean
from ck_dagster.experiment import values
from ck_dagster.experiment.data import (
    EVALUATION_NEEDS,
    TRAINING_NEEDS,
    missing_rows,
    parquet_splits,
    split_sizes,
)
from ck_dagster.experiment.data_file import data_file_problems
from ck_dagster.experiment.problems import (
    ExperimentFileError,
    FieldPath,
    Problem,
    format_path,
)
from ck_dagster.experiment.schema import Experiment, ExperimentFile, resolve_path
from ck_dagster.experiment.values import control_characters
from ck_dagster.experiment.yaml_lines import LoadedYaml, load_yaml
from ck_dagster.fileio import (
    UnreadableFile,
    file_in_the_way,
    read_bounded,
    regular_file_reason,
)

#: the largest experiment file read (they are a few kilobytes).
MAX_FILE_BYTES = 1_000_000
#: parameters a control run may set: they change what the model is asked, not how it is trained.
CONTROL_RUN_PARAMETERS = frozenset({"prompt", "system_prompt"})


@dataclass(frozen=True)
class ExperimentReading:
    """What reading an experiment file found.

    When there are problems, ``experiment`` is the part of the file that validates (invalid
    runs and unknown keys left out), or None: it exists so later checks can report their
    problems in the same pass, and must never be registered or written.
    """

    file: Path
    experiment: Experiment | None
    problems: list[Problem]


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment file.

    Raises :class:`ExperimentFileError` listing every problem found; returns the experiment
    with its paths resolved otherwise. Training configs are checked later, by
    :func:`ck_dagster.finetune.plan.plan_experiment`.
    """
    reading = read_experiment(path)
    if reading.problems or reading.experiment is None:
        raise ExperimentFileError(Path(path).expanduser(), reading.problems)  # as typed
    return reading.experiment


def read_experiment(path: str | Path) -> ExperimentReading:
    """Parse and check an experiment file, collecting every problem instead of raising."""
    file = resolve_path(str(path), Path.cwd())
    try:
        file = file.resolve()
    except (RuntimeError, OSError):
        pass  # a symlink loop: reading it says so
    if control_characters(str(file)):
        return ExperimentReading(
            file,
            None,
            [
                Problem(
                    (),
                    "the file's path contains control characters "
                    f"({', '.join(control_characters(str(file)))})",
                    "rename the file",
                )
            ],
        )
    try:
        text = read_bounded(file, MAX_FILE_BYTES).decode("utf-8")
    except UnreadableFile as exc:
        fix = (
            "check the path"
            if str(exc).startswith("not found")
            else "give the path of an experiment file (YAML)"
        )
        return ExperimentReading(file, None, [Problem((), str(exc), fix)])
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        return ExperimentReading(
            file,
            None,
            [
                Problem(
                    (),
                    f"is not UTF-8 text (byte {exc.object[exc.start]:#04x})",
                    "save the file as UTF-8",
                    line,
                )
            ],
        )
    loaded = load_yaml(text)
    problems = list(loaded.problems)
    if loaded.data is None and not problems:
        problems.append(Problem((), "the file is empty", "start from examples/ in ck_dagster"))
    elif loaded.data is not None and not isinstance(loaded.data, dict):
        problems.append(
            Problem((), "the top level must be a mapping (experiment:, runs:, ...)", line=1)
        )
    if problems:
        return ExperimentReading(file, None, problems)
    value_problems = [_with_line(p, loaded) for p in values.value_problems(loaded.data)]
    try:
        experiment: Experiment | None = Experiment(
            ExperimentFile.model_validate(loaded.data), file, loaded
        )
    except ValidationError as exc:
        problems = _schema_problems(exc, loaded)
        experiment = _valid_part(exc, loaded, file)
    if value_problems:
        # a value no field may hold is never checked further; one problem per field
        fields = {p.path for p in value_problems}
        return ExperimentReading(
            file, None, value_problems + [p for p in problems if p.path not in fields]
        )
    if experiment is not None:
        problems += [_with_line(p, loaded) for p in _cross_reference_problems(experiment)]
    return ExperimentReading(file, experiment, problems)


def _valid_part(exc: ValidationError, loaded: LoadedYaml, file: Path) -> Experiment | None:
    """The refused file without its unknown keys and invalid evaluation section, when that
    validates, so later checks report their problems in the same pass. A refused run is kept
    with a stand-in for its wrong ``type`` (its parameters are checked as a fine-tuned run's),
    else left out."""
    data = copy.deepcopy(loaded.data)
    invalid_runs: set[int] = set()
    repairable: set[int] = set()
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if error["type"] == "extra_forbidden":
            path = _data_path(loaded.data, loc)
            parent = _node(data, path[:-1])
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
        elif loc[:1] == ("runs",) and len(loc) >= 2 and isinstance(loc[1], int):
            (repairable if loc[2:] == ("type",) else invalid_runs).add(loc[1])
        elif loc[:1] == ("evaluation",):
            data.pop("evaluation", None)
        elif loc[:1] == ("experiment",) and len(loc) >= 2 and loc[1] not in ("dir", "directory"):
            # a name or description: the runs can be checked without it
            data["experiment"][loc[1]] = "unnamed" if loc[1] == "name" else None
        else:
            return None  # experiment, models or data are wrong: nothing further can be checked
    runs = data.get("runs")
    if not isinstance(runs, list):
        return None
    for index in repairable - invalid_runs:
        runs[index]["type"] = "fine-tuned"
    positions = [i for i in range(len(runs)) if i not in invalid_runs]
    data["runs"] = [runs[i] for i in positions]
    try:
        return Experiment(ExperimentFile.model_validate(data), file, loaded, positions)
    except ValidationError:
        return None


def _node(data: Any, path: FieldPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _with_line(problem: Problem, loaded: LoadedYaml) -> Problem:
    if problem.line is not None:
        return problem
    return Problem(problem.path, problem.message, problem.fix, loaded.line_of(problem.path))


def _schema_problems(exc: ValidationError, loaded: LoadedYaml) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        path = _data_path(loaded.data, error["loc"])
        problems.append(_with_line(_describe(error, path), loaded))
    return _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """Union types make pydantic report one bad value once per member: keep the first."""
    seen: set[FieldPath] = set()
    kept = []
    for problem in problems:
        if problem.path not in seen:
            kept.append(problem)
            seen.add(problem.path)
    return kept


def _data_path(data: Any, loc: tuple[Any, ...]) -> FieldPath:
    """Map pydantic's error location onto the document (dropping union member names)."""
    path: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif index == len(loc) - 1 and isinstance(node, dict):
            path.append(part)  # a missing key
    return tuple(path)


def _describe(error: dict[str, Any], path: FieldPath) -> Problem:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(path[-1])
        allowed = _allowed_keys(path[:-1])
        if key in allowed:  # one field given by two of its names
            others = [n for n in _names_of_field(path[:-1], key) if n != key]
            return Problem(
                path,
                f"`{key}` is another name of `{'`, `'.join(others)}`, which is also given",
                "keep one of them",
            )
        fix = (
            did_you_mean(key, allowed)
            or _belongs_elsewhere(key, path[:-1])
            or (
                "remove it; allowed here: " + ", ".join(sorted(allowed)) if allowed else "remove it"
            )
        )
        return Problem(path, f"unknown key `{key}`", fix)
    if kind == "missing":
        return Problem(path, "required field is missing", f"add `{path[-1]}:`")
    message = error["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        choices = [
            c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c.strip()
        ]
        fix = did_you_mean(str(value), choices) or f"use one of: {expected}"
        return Problem(path, f"`{value}` is not allowed", fix)
    return Problem(path, f"{message} (got {value!r})" if _is_scalar(value) else message)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _model_at(path: FieldPath) -> Any:
    """The schema model (or type) of the field at ``path``; None when there is none."""
    model: Any = ExperimentFile
    for part in path:
        model = _unwrap(model)
        if isinstance(part, int):
            args = get_args(model)
            model = args[0] if args else None
        elif isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(part)
            model = field.annotation if field else None
        else:
            return None
    return _unwrap(model)


def _allowed_keys(path: FieldPath) -> list[str]:
    """The field names the schema allows at ``path`` (for "did you mean"), aliases included."""
    model = _model_at(path)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [
            name for field_name in model.model_fields for name in _field_names(model, field_name)
        ]
    return []


def _field_names(model: type[BaseModel], field_name: str) -> list[str]:
    """A field's names in a file: its v1 name and the names accepted before (aliases)."""
    alias = model.model_fields[field_name].validation_alias
    return (
        [str(choice) for choice in alias.choices]
        if isinstance(alias, AliasChoices)
        else [field_name]
    )


def _names_of_field(path: FieldPath, key: str) -> list[str]:
    """Every name of the field that ``key`` names at ``path``."""
    model = _model_at(path)
    groups = [_field_names(model, name) for name in model.model_fields]
    return next(group for group in groups if key in group)


def _belongs_elsewhere(key: str, parent: FieldPath) -> str | None:
    """Where a key put at the wrong level goes: ``lr`` under a run goes in its ``parameters``,
    ``base_recipe`` at the top level under ``controls``, ``dir`` under ``experiment``."""
    if key in PARAMETERS or key in CONTROL_KEYS:
        if len(parent) == 2 and parent[0] == "runs":
            return f"training parameters go under `{format_path(parent)}.parameters:`"
        return (
            "it belongs under `controls:` (or a run's `parameters:`)"
            if key in PARAMETERS
            else "it belongs under `controls:`"
        )
    here = re.sub(r"\[\d+\]", "[]", format_path(parent)) if parent else ""
    homes = _field_homes().get(key, [])
    if here in homes:
        return None
    # a home under the key's parent (runs[].compute for a run's `time`), else the shallowest
    home = next((h for h in homes if here and h.startswith(here + ".")), None)
    if home is not None:
        home = format_path(parent) + home[len(here) :]
    elif homes:
        home = homes[0]
    else:
        return None
    return f"it belongs under `{home}:`" if home else "it belongs at the top level"


@lru_cache(maxsize=1)
def _field_homes() -> dict[str, list[str]]:
    """Every place each schema field name is allowed, shallowest first ("dir" -> experiment)."""
    homes: dict[str, list[str]] = {}
    queue: list[tuple[str, Any]] = [("", ExperimentFile)]
    while queue:
        where, model = queue.pop(0)
        for name, field in model.model_fields.items():
            for alias in _field_names(model, name):
                homes.setdefault(alias, []).append(where)
            child, place = _unwrap(field.annotation), f"{where}.{name}" if where else name
            if get_origin(child) is list:
                child, place = _unwrap(get_args(child)[0]), place + "[]"
            if isinstance(child, type) and issubclass(child, BaseModel):
                queue.append((place, child))
    return homes


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``; the first model in a union otherwise."""
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        return (models or members)[0]
    return annotation


def _cross_reference_problems(experiment: Experiment) -> list[Problem]:
    spec = experiment.spec
    problems: list[Problem] = []
    runs = experiment.indexed_runs()
    problems += _duplicates(_run_names_in_file(experiment), ("runs",), "run name")
    problems += _duplicates(
        list(enumerate(m.name for m in spec.models.base)), ("models", "base"), "model name"
    )

    for index, model in enumerate(spec.models.base):
        if model.name not in MODELS:
            fix = did_you_mean(model.name, MODELS) or (
                "known models: " + ", ".join(MODELS) + " (adding one is one entry in "
                "ck_dagster/catalog/models.py)"
            )
            problems.append(
                Problem(("models", "base", index, "name"), f"unknown model `{model.name}`", fix)
            )

    base_names = [m.name for m in spec.models.base]
    for index, run in runs:
        if run.model not in base_names:
            fix = did_you_mean(run.model, base_names) or (
                f"add it to models.base, or use one of: {', '.join(base_names)}"
            )
            problems.append(
                Problem(
                    ("runs", index, "model"),
                    f"run `{run.name}` names unknown model `{run.model}`",
                    fix,
                )
            )
        if run.is_control:
            for key in run.parameters:
                if key not in CONTROL_RUN_PARAMETERS:
                    problems.append(
                        Problem(
                            ("runs", index, "parameters", key),
                            f"control run `{run.name}` is never trained, so `{key}` has no effect",
                            "remove it, or make the run `type: fine-tuned`",
                        )
                    )

    problems += _path_problems(experiment)
    problems += _data_problems(experiment)
    problems += _variables_problems(experiment)
    problems += _evaluation_problems(experiment)
    return problems


def _path_problems(experiment: Experiment) -> list[Problem]:
    """Paths that cannot be used: ``~user`` unknown, names too long, an experiment folder that
    is a file or that SLURM's #SBATCH lines cannot hold, a data file that is not one."""
    spec = experiment.spec
    folder = _given_name(experiment, ("experiment",), "directory", "dir")
    fields: list[tuple[FieldPath, str]] = [
        (folder, spec.experiment.directory),
        (("data", "training", "path"), spec.data.training.path),
    ]
    if spec.output.base_directory is not None:
        fields.append((("output", "base_directory"), spec.output.base_directory))
    fields += [(("models", "base", i, "path"), m.path) for i, m in enumerate(spec.models.base)]
    fields += [
        (("evaluation", "tasks", i, "script"), t.script)
        for i, t in enumerate(spec.evaluation.tasks if spec.evaluation else [])
        if t.script
    ]
    problems = []
    for field, text in fields:
        reason = path_reason(text)
        if reason:
            problems.append(
                Problem(field, f"`{text}` {reason}", "give a path that exists or can be made")
            )
    if problems:
        return problems
    for field, directory, resolved in (
        (folder, spec.experiment.directory, experiment.dir),
        (
            ("output", "base_directory"),
            spec.output.base_directory,
            experiment.resolve(spec.output.base_directory or "."),
        ),
    ):
        if directory is None:
            continue
        if any(c in directory for c in "%\\") or "${" in directory:
            problems.append(
                Problem(
                    field,
                    "contains `%`, `\\` or `${`, which SLURM reads as a "
                    "log-name pattern or an escape in #SBATCH lines, or "
                    "torchtune as an interpolation",
                    "choose a directory without them",
                )
            )
        blocker = file_in_the_way(resolved)
        if blocker is not None:
            problems.append(
                Problem(
                    field,
                    f"{blocker} is a file, so {resolved} cannot be a folder",
                    "choose another folder",
                )
            )
    return problems


def path_reason(text: str) -> str | None:
    """Why a path from the file cannot be used at all, or None."""
    try:
        Path(text).expanduser()
    except RuntimeError:
        return f"names a user (`{text.split('/', 1)[0]}`) this machine does not know"
    if len(text.encode()) > 4000:
        return "is too long for a path"
    if any(len(part.encode()) > 255 for part in Path(text).parts):
        return "has a name longer than 255 bytes, which file systems refuse"
    return None


def _data_problems(experiment: Experiment) -> list[Problem]:
    """The data exists in its format, has the splits training and evaluation read, and as many
    rows in each as ``splits`` says."""
    spec = experiment.spec
    data, path = spec.data.training, experiment.resolve(spec.data.training.path)
    where = ("data", "training", "path")
    if data.format == "json" and path.is_dir():
        return [
            Problem(
                where,
                f"data file {path} is a folder, not a file",
                "point it at the JSON file with train/validation/test splits, or set "
                "`format: parquet` for a folder of parquet files",
            )
        ]
    if data.format == "json":
        found = data_file_problems(path, data.input_key, data.output_key)
        if found:
            return [Problem(where, message, fix) for message, fix in found]
    if data.format == "parquet" and not (path.is_dir() and parquet_splits(path)):
        return [
            Problem(
                where,
                f"{path} is not a folder of parquet files",
                "point it at a folder of train.parquet, validation.parquet and test.parquet",
            )
        ]
    needs = [TRAINING_NEEDS] if any(not r.is_control for r in spec.runs) else []
    if spec.evaluation and any(t.script is None for t in spec.evaluation.tasks):
        needs.append(EVALUATION_NEEDS)
    try:
        sizes = split_sizes(path)
        problems = [Problem(where, message, fix) for message, fix in missing_rows(path, *needs)]
    except CkError as exc:
        return [Problem(where, str(exc))]
    for split, expected in (
        data.splits.model_dump(exclude_none=True) if data.splits else {}
    ).items():
        if sizes.get(split, 0) != expected:
            problems.append(
                Problem(
                    ("data", "training", "splits", split),
                    f"says {expected} rows, but the `{split}` split of {path} "
                    f"has {sizes.get(split, 0)}",
                    "correct the count (or remove `splits`)",
                )
            )
    return problems


def _variables_problems(experiment: Experiment) -> list[Problem]:
    """``variables`` lists exactly the values the fine-tuned runs use, and every parameter they
    vary (names compared by the setting they make: ``lr`` is ``learning_rate``)."""
    variables = experiment.spec.variables
    if variables is None:
        return []
    trained = [(i, r) for i, r in experiment.indexed_runs() if not r.is_control]
    problems = []
    for name, listed in variables.items():
        used = {run.name: experiment.run_value(run, name) for _, run in trained}
        for index, run in trained:
            value = used[run.name]
            if value is None:
                problems.append(
                    Problem(
                        ("runs", index, "parameters"),
                        f"run `{run.name}` does not set `{name}`, which "
                        "`variables` says the runs vary",
                        f"set `{name}` in its parameters",
                    )
                )
            elif not any(value == v for v in listed):
                problems.append(
                    Problem(
                        ("runs", index, "parameters"),
                        f"run `{run.name}` uses {name} = {value!r}, which "
                        f"`variables.{name}` does not list",
                        f"add it to variables.{name}",
                    )
                )
        for v_index, value in enumerate(listed):
            if not any(value == u for u in used.values()):
                problems.append(
                    Problem(
                        ("variables", name, v_index),
                        f"no run uses {name} = {value!r}",
                        "remove it, or add a run that uses it",
                    )
                )
    covered = {config_path(name) for name in variables}
    varied: dict[str, str] = {}
    for _, run in trained:
        for name in run.parameters:
            if config_path(name) not in covered:
                varied.setdefault(config_path(name), name)
    for name in varied.values():
        values = {repr(experiment.run_value(run, name)) for _, run in trained}
        if len(values) > 1:
            problems.append(
                Problem(
                    ("variables",),
                    f"the runs vary `{name}` ({', '.join(sorted(values))}), "
                    "which `variables` does not list",
                    f"add `{name}: [...]` to variables",
                )
            )
    return problems


def _evaluation_problems(experiment: Experiment) -> list[Problem]:
    evaluation = experiment.spec.evaluation
    if evaluation is None:
        return []
    problems = _duplicates(
        list(enumerate(t.name for t in evaluation.tasks)), ("evaluation", "tasks"), "task name"
    )
    trained_with = experiment.spec.controls.get("system_prompt", "")
    if evaluation.system_prompt is not None and evaluation.system_prompt != trained_with:
        problems.append(
            Problem(
                ("evaluation", "system_prompt"),
                f"differs from the system prompt the runs train with "
                f"({trained_with!r}); evaluation always uses the run's own",
                "make it the same as `controls.system_prompt`, or remove it",
            )
        )
    for index, task in enumerate(evaluation.tasks):
        script = experiment.resolve(task.script) if task.script is not None else None
        reason = regular_file_reason(script) if script else None
        if reason:
            problems.append(
                Problem(
                    ("evaluation", "tasks", index, "script"),
                    f"task script {script} {reason}",
                    "fix the path, or leave `script` out for the built-in task",
                )
            )
    run_names = [name for _, name in _run_names_in_file(experiment)]
    task_names = [t.name for t in evaluation.tasks]
    for index, entry in enumerate(evaluation.matrix or []):
        if entry.run not in run_names:
            problems.append(
                Problem(
                    ("evaluation", "matrix", index, "run"),
                    f"unknown run `{entry.run}`",
                    did_you_mean(entry.run, run_names) or "use a name from runs[]",
                )
            )
        for t_index, task in enumerate(entry.tasks or []):
            if task not in task_names:
                problems.append(
                    Problem(
                        ("evaluation", "matrix", index, "tasks", t_index),
                        f"unknown task `{task}`",
                        did_you_mean(task, task_names) or "use a name from evaluation.tasks[]",
                    )
                )
        for e_index, epoch in enumerate(entry.epochs or []):
            if epoch < 0:
                problems.append(
                    Problem(
                        ("evaluation", "matrix", index, "epochs", e_index),
                        f"epoch {epoch} is negative",
                        "epochs count from 0",
                    )
                )
    return problems


def _given_name(experiment: Experiment, parent: FieldPath, *names: str) -> FieldPath:
    """The path of a field under the name the file gives it (``dir`` or ``directory``)."""
    node = _node(experiment.source.data, parent)
    return (*parent, next((n for n in names if isinstance(node, dict) and n in node), names[0]))


def _run_names_in_file(experiment: Experiment) -> list[tuple[int, str]]:
    """(index, name) of every run in the file, also of runs refused for another reason."""
    return [
        (index, run["name"])
        for index, run in enumerate(experiment.source.data["runs"])
        if isinstance(run, dict) and isinstance(run.get("name"), str)
    ]


def _duplicates(names: list[tuple[int, str]], path: FieldPath, what: str) -> list[Problem]:
    """A problem for every name (index, name) that an earlier entry already has."""
    seen: set[str] = set()
    problems = []
    for index, name in names:
        if name in seen:
            problems.append(
                Problem(
                    (*path, index, "name"),
                    f"duplicate {what} `{name}`",
                    f"{what}s must be unique; rename one",
                )
            )
        seen.add(name)
    return problems
