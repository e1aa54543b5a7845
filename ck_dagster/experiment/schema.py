"""The experiment file (``experiment_summary.yaml``) as typed, validated models.

The schema is the one researchers already write for cruijff_kit (see experiment-schema.md).
Every model forbids unknown keys, so nothing in a file is silently ignored.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, field_validator

from ck_dagster.catalog.parameters import MAX_SEED, config_path
from ck_dagster.experiment.problems import FieldPath
from ck_dagster.experiment.yaml_lines import LoadedYaml

# Every pattern is matched against the whole string (``fullmatch``): ``$`` alone would let a
# trailing newline through, and a newline splits the lines of the files these values go into.
#: names that become directories, partition keys and SLURM job names.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
#: longest name: a run folder and its files stay well under a file system's 255-byte names.
MAX_NAME_LENGTH = 100
#: SLURM option values: partition, constraint expressions, account names, times, memory.
_SLURM_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:,|&*\[\]-]*")
_MEMORY = re.compile(r"([0-9]+)([KMGT]?)")
_TIME = re.compile(r"(?:[0-9]+-)?[0-9]+(?::[0-9]{1,2}){0,2}")
_WANDB_PROJECT = re.compile(r"^[^/\\#?%:\s]{1,128}$")


def _safe_name(value: str) -> str:
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            "must be safe as a directory name and partition key: letters, digits and . _ + = -, "
            "starting with a letter or digit, no `..`, no `/`, no spaces or shell characters"
        )
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"is {len(value)} characters long; names have at most {MAX_NAME_LENGTH}")
    return value


def _slurm_value(value: str) -> str:
    if not _SLURM_VALUE.fullmatch(value) or len(value) > 200:
        raise ValueError(
            "is not a valid SLURM value (letters, digits and . _ : , | & * [ ] -, at most 200)"
        )
    return value


def _folder(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty: name a folder")
    if Path(value).expanduser() == Path("/"):
        raise ValueError("is the root folder `/`: name a folder of its own")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
SlurmValue = Annotated[str, AfterValidator(_slurm_value)]
#: a folder the experiment writes into: not empty, not `/`.
Folder = Annotated[str, AfterValidator(_folder)]


def resolve_path(path: str, folder: Path) -> Path:
    """``path`` with ``~`` expanded, relative to ``folder``; as written (made absolute) when it
    cannot be expanded or resolved."""
    try:
        expanded = Path(path).expanduser()
    except RuntimeError:  # ~nosuchuser
        expanded = Path(path)
    if expanded.is_absolute():
        return expanded
    try:
        return (folder / expanded).resolve()
    except (RuntimeError, OSError):  # a symlink loop, a name too long
        return Path(os.path.abspath(folder / expanded))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _aliased(*names: str, **kwargs: Any) -> Any:
    """A field known by v1's name (the first) and the names ck_dagster accepted before."""
    return Field(validation_alias=AliasChoices(*names), **kwargs)


class ExperimentInfo(_Strict):
    """``experiment:``: what the experiment is and where its runs live (the rest is shown in
    metadata: informational)."""

    name: SafeName
    directory: Folder = _aliased(
        "directory",
        "dir",
        description="where run directories go; relative paths are relative to the file",
    )
    project: str | None = None
    question: str | None = None
    hypothesis: str | None = None
    purpose: str | None = None
    date: dt.date | str | None = None
    description: str | None = None


class Tools(_Strict):
    """``tools:``: only torchtune and inspect-ai are supported."""

    preparation: Literal["torchtune"] = "torchtune"
    evaluation: Literal["inspect-ai"] = "inspect-ai"


class BaseModelEntry(_Strict):
    """``models.base[]``: a model the project knows, and where its HF-format folder is."""

    name: str
    path: str
    size_gb: float | None = None


class Models(_Strict):
    base: list[BaseModelEntry] = Field(min_length=1)


class Splits(_Strict):
    train: int | None = None
    validation: int | None = None
    test: int | None = None


class TrainingData(_Strict):
    """``data.training``: JSON with train/validation/test lists of {input, output} rows, or a
    folder of parquet files named after their splits."""

    path: str
    label: str | None = _aliased("label", "dataset_label", default=None)
    format: Literal["json", "parquet"] = "json"
    size_kb: float | None = None
    splits: Splits | None = None
    input_key: str = "input"
    output_key: str = "output"
    #: v1's record of how the data was generated (informational).
    data_generation: dict[str, Any] | None = None


class Data(_Strict):
    training: TrainingData


class Output(_Strict):
    """``output:``: where training outputs go and where their metrics are logged."""

    base_directory: str | None = None
    checkpoint_pattern: str = "{run_name}/epoch_{N}"
    wandb_project: str | None = None

    @field_validator("wandb_project")
    @classmethod
    def _project(cls, value: str | None) -> str | None:
        if value is not None and not _WANDB_PROJECT.match(value):
            raise ValueError(
                "is not a W&B project name (1 to 128 characters, none of / \\ # ? % : or spaces)"
            )
        return value

    @field_validator("checkpoint_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        head, sep, tail = value.rpartition("/")
        if (
            sep != "/"
            or tail != "epoch_{N}"
            or "{run_name}" not in head
            or "{" in head.replace("{run_name}", "")
        ):
            raise ValueError(
                "must be a folder with {run_name}, then /epoch_{N} "
                '(e.g. "ck-out-{run_name}/epoch_{N}")'
            )
        return value


def slurm_time(value: str) -> str:
    """``value`` when it is a non-zero SLURM time limit; ValueError saying why otherwise."""
    if not _TIME.fullmatch(value):
        raise ValueError('is not a SLURM time limit such as "1:00:00", "90" or "1-12:00:00"')
    if not any(int(n) for n in re.findall(r"[0-9]+", value)):
        raise ValueError('is zero: give the job some time, e.g. "1:00:00"')
    if len(value) > 20:
        raise ValueError("is too long for a SLURM time limit")
    return value


class Compute(_Strict):
    """``compute:`` and ``runs[].compute``: SLURM overrides of the cluster profile."""

    time: str | None = None
    gpus: int | None = Field(default=None, ge=0, le=64)
    cpus: int | None = Field(default=None, ge=1, le=1024)
    mem: str | None = None
    partition: SlurmValue | None = None
    constraint: SlurmValue | None = None
    account: SlurmValue | None = None
    qos: SlurmValue | None = None
    mig: bool | None = None

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return None if value is None else slurm_time(value)

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _MEMORY.fullmatch(value)
        if not match or len(match.group(1)) > 12:
            raise ValueError('is not a SLURM memory size such as "40G" or "16000M"')
        if int(match.group(1)) == 0:
            raise ValueError('is zero: ask for some memory, e.g. "40G"')
        return value


class Run(_Strict):
    """``runs[]``: one partition of the experiment."""

    name: SafeName
    type: Literal["fine-tuned", "control"]
    model: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    compute: Compute | None = None
    #: v1's MIG flag: the same as ``compute.mig``.
    mig: bool | None = None

    @property
    def is_control(self) -> bool:
        """Control runs are evaluated on the base model and never trained."""
        return self.type == "control"


class Scorer(_Strict):
    name: Literal["match", "includes", "exact"]
    params: dict[str, Any] = Field(default_factory=dict)


class EvalTask(_Strict):
    """``evaluation.tasks[]``: a user inspect task script, or the built-in input/output task."""

    name: SafeName
    script: str | None = None
    #: v1: the evaluation data; only ``same`` (the training data's test split) is supported.
    dataset: Literal["same"] | None = None
    description: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    prompt: str | None = None
    system_prompt: str | None = None


class MatrixEntry(_Strict):
    """``evaluation.matrix[]``: which tasks and epochs one run is evaluated on."""

    run: str
    tasks: list[str] | None = None
    epochs: list[int] | None = None
    vis_label: str | None = None


class Evaluation(_Strict):
    """``evaluation:``: generation settings, tasks and which run x task x epoch to evaluate."""

    #: v1 repeats the training system prompt here; it must match (evaluation uses the run's).
    system_prompt: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    do_sample: bool | None = None
    max_connections: int | None = Field(default=None, ge=1)
    scorers: list[Scorer | str] | None = _aliased("scorers", "scorer", default=None)
    tasks: list[EvalTask] = Field(min_length=1)
    matrix: list[MatrixEntry] | None = None


class ExperimentFile(_Strict):
    """The whole ``experiment_summary.yaml``."""

    experiment: ExperimentInfo
    tools: Tools = Field(default_factory=Tools)
    controls: dict[str, Any] = Field(default_factory=dict)
    variables: dict[str, list[Any]] | None = None
    models: Models
    data: Data
    output: Output = Field(default_factory=Output)
    compute: Compute | None = None
    runs: list[Run] = Field(min_length=1)
    evaluation: Evaluation | None = None


class Experiment:
    """A validated experiment file, with paths resolved against the file's folder."""

    def __init__(
        self,
        spec: ExperimentFile,
        file: Path,
        source: LoadedYaml,
        run_positions: list[int] | None = None,
    ):
        """``run_positions``: where each of ``spec.runs`` stands in the file's ``runs:`` list,
        when some runs were left out because they are invalid (see ``read_experiment``)."""
        self.spec = spec
        self.file = file
        #: the parsed document with field lines, for problems found after loading.
        self.source = source
        self._run_positions = run_positions or list(range(len(spec.runs)))

    def line_of(self, path: FieldPath) -> int | None:
        """The line in the file of a field (or of its closest ancestor)."""
        return self.source.line_of(path)

    @property
    def name(self) -> str:
        return self.spec.experiment.name

    @property
    def dir(self) -> Path:
        """The experiment directory: ``<experiment.directory>``, resolved."""
        return self.resolve(self.spec.experiment.directory)

    @property
    def runs(self) -> list[Run]:
        return self.spec.runs

    def indexed_runs(self) -> list[tuple[int, Run]]:
        """Every run with its index in the file's ``runs:`` list (the index problems name)."""
        return list(zip(self._run_positions, self.spec.runs))

    def run(self, name: str) -> Run:
        """The run called ``name`` (KeyError if there is none)."""
        for run in self.spec.runs:
            if run.name == name:
                return run
        raise KeyError(name)

    def run_dir(self, run: Run | str) -> Path:
        """``<experiment.directory>/<run>``: the run's configs, scripts and evaluations."""
        return self.dir / (run if isinstance(run, str) else run.name)

    def output_dir(self, run: Run | str) -> Path:
        """Where a run's training outputs (epoch folders, logs) go: the folder of
        ``output.checkpoint_pattern`` under ``output.base_directory``, or
        ``<experiment.directory>/<run>/artifacts`` without a base directory."""
        name = run if isinstance(run, str) else run.name
        output = self.spec.output
        if output.base_directory is None:
            return self.run_dir(name) / "artifacts"
        folder = output.checkpoint_pattern.rpartition("/")[0].replace("{run_name}", name)
        return self.resolve(output.base_directory) / folder

    def model_entry(self, run: Run) -> BaseModelEntry:
        """The ``models.base`` entry a run names."""
        return next(m for m in self.spec.models.base if m.name == run.model)

    def resolve(self, path: str) -> Path:
        """A path from the file, with ``~`` expanded and relative paths taken from the file.

        Never raises: a path that cannot be expanded or resolved (``~nosuchuser``, a symlink
        loop) comes back as written, made absolute; reading the file reports it as a problem.
        """
        return resolve_path(path, self.file.parent)

    def run_value(self, run: Run, name: str) -> Any:
        """What a run sets for variable ``name``: its ``model`` for ``model``, else its own
        parameter or the controls' by any name of the same setting (None when neither does)."""
        if name == "model":
            return run.model
        for layer in (run.parameters, self.spec.controls):
            for key, value in layer.items():
                if config_path(key) == config_path(name):
                    return value
        return None

    def information(self, run: Run) -> dict[str, Any]:
        """The informational fields of the file (they change nothing that is built), with the
        dataset's label, as a run's metadata shows them."""
        spec = self.spec
        data, model = spec.data.training, self.model_entry(run)
        values: dict[str, Any] = {
            **{
                f"experiment.{k}": str(v)
                for k, v in spec.experiment.model_dump(
                    include={"project", "question", "hypothesis", "purpose", "date", "description"},
                    exclude_none=True,
                ).items()
            },
            "dataset": data.label or Path(data.path).stem,
            "data.size_kb": data.size_kb,
            "model.size_gb": model.size_gb,
            "data_generation": data.data_generation,
        }
        return {k: v for k, v in values.items() if v is not None}

    def vis_labels(self) -> dict[str, str]:
        """``evaluation.matrix[].vis_label`` by run: how plots name the runs."""
        matrix = self.spec.evaluation.matrix if self.spec.evaluation else None
        return {e.run: e.vis_label for e in matrix or [] if e.vis_label}

    def partition_key(self, run: Run | str) -> str:
        """The Dagster partition key of a run: ``<experiment>/<run>``."""
        return f"{self.name}/{run if isinstance(run, str) else run.name}"
