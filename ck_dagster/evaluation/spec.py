"""EvalSpec: everything one run's evaluation job needs, as JSON the job reads back.

``eval_spec_for(plan)`` builds it from the run's plan and the experiment's ``evaluation:``
section; the asset writes it to ``<run_dir>/eval/eval_spec.json`` and the job
(``python -m ck_dagster.evaluation.job``) evaluates exactly what it says. Logs go to
``<run_dir>/eval/<task>/<label>/logs/*.eval`` with label ``epoch_<N>`` or ``base``.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from ck_dagster.catalog import parameters
from ck_dagster.catalog.models import KnownModel
from ck_dagster.catalog.parameters import INPUT_PLACEHOLDER
from ck_dagster.errors import CkError
from ck_dagster.evaluation.imports import local_imports
from ck_dagster.experiment.data import EVALUATION_NEEDS, data_digest, missing_rows, split_sizes
from ck_dagster.experiment.problems import ExperimentFileError, FieldPath, Problem
from ck_dagster.experiment.schema import EvalTask, Evaluation, MatrixEntry, Scorer
from ck_dagster.fileio import atomic_write_text
from ck_dagster.finetune.plan import ExperimentPlan, RunPlan, file_digest

#: the folder of a run that holds everything evaluation writes.
EVAL_DIR = "eval"
SPEC_FILE = "eval_spec.json"
RESULTS_FILE = "results.json"
#: the label of a control run's only target, its base model.
BASE_LABEL = "base"
#: the data split the built-in task scores.
TEST_SPLIT = "test"
#: the digest recorded for a tokenizer file that is not there (loading it will say so).
MISSING_FILE = "missing"
#: the built-in task's scorers when ``evaluation.scorers`` is not set: v1's case-sensitive pair.
DEFAULT_SCORERS: tuple[Scorer, ...] = (
    Scorer(name="match", params={"location": "exact", "ignore_case": False}),
    Scorer(name="includes", params={"ignore_case": False}),
)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TorchtuneModel(_Frozen):
    """How to load a target with torchtune: full-model builder, tokenizer, checkpointer, device.

    Targets are full models (a LoRA epoch's adapter is merged into its base model's weights as
    it is applied), so the full-model builder loads every one.
    """

    #: torchtune full-model builder, e.g. ``torchtune.models.llama3_2.llama3_2_1b``.
    builder: str
    #: the tokenizer node of the run's config: ``_component_`` and its arguments.
    tokenizer: dict[str, Any]
    #: ``checkpointer.model_type`` (how HF weight names map to torchtune's).
    model_type: str
    #: weight files for a folder without a ``model.safetensors.index.json`` (a base model).
    checkpoint_files: list[str] | dict[str, str]
    device: str = "cpu"
    #: torchtune's dtype names: ``fp32``, ``bf16``, ``fp16``.
    dtype: str = "fp32"

    @classmethod
    def of(
        cls, model: KnownModel, model_dir: Path, *, device: str = "cpu", dtype: str = "fp32"
    ) -> TorchtuneModel:
        """The registry's settings for ``model``, with its tokenizer files in ``model_dir``."""
        tokenizer: dict[str, Any] = {
            "_component_": model.tokenizer,
            **{arg: str(model_dir / rel) for arg, rel in model.tokenizer_files.items()},
        }
        max_seq_len = model.config_overrides.get("tokenizer.max_seq_len")
        if max_seq_len is not None:
            tokenizer["max_seq_len"] = max_seq_len
        return cls(
            builder=model.builder,
            tokenizer=tokenizer,
            model_type=model.model_type,
            checkpoint_files=model.checkpoint_files,
            device=device,
            dtype=dtype,
        )

    def identity(self) -> str:
        """These settings as one string, key order aside: targets with the same identity
        load a folder into the same model the same way (a control run's tokenizer node and a
        LoRA run's differ only in key order)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


class EvalTarget(_Frozen):
    """One model to evaluate and the tasks it gets: a model folder (a saved epoch, or the base
    model), with a LoRA epoch's adapter applied when ``adapter`` names its epoch folder."""

    label: str
    path: str
    tasks: tuple[str, ...]
    #: an epoch folder holding adapter files (``adapter_model.pt``, ``adapter_config.json``,
    #: perhaps stashed in ``adapter_weights/``) to apply to the model at ``path``.
    adapter: str | None = None

    @property
    def checkpoint(self) -> str:
        """The folder training wrote for this target (the adapter's, else the model's)."""
        return self.adapter or self.path

    @model_serializer(mode="wrap")
    def _without_empty_adapter(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Targets without an adapter serialize (and hash) as before adapters existed."""
        data = handler(self)
        if data.get("adapter") is None:
            data.pop("adapter", None)
        return data


class TaskSpec(_Frozen):
    """One task: a user inspect task script (``script`` + ``args``) or the built-in task."""

    name: str
    #: absolute path of the user's task script; None means the built-in input/output task.
    script: str | None = None
    #: the script's content hash, so editing the script makes the evaluation out of date.
    script_sha256: str | None = None
    #: content hashes of the modules the script imports from its own or the experiment's
    #: folder (path -> sha256): editing a helper module makes the evaluation out of date too.
    imports: dict[str, str] = {}
    args: dict[str, Any] = {}
    prompt: str
    system_prompt: str

    @property
    def is_builtin(self) -> bool:
        return self.script is None


class EvalData(_Frozen):
    """The data file the run trained on; the built-in task scores its test split."""

    path: str
    sha256: str
    input_key: str = "input"
    output_key: str = "output"
    split: str = TEST_SPLIT
    #: rows in ``split`` (what every built-in evaluation must score).
    rows: int


class EvalSettings(_Frozen):
    """Generation and scoring settings from ``evaluation:``; None leaves inspect's default."""

    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    #: sample (seeded by ``seed``) instead of greedy decoding; greedy also when temperature is 0.
    do_sample: bool = False
    max_connections: int | None = None
    #: the built-in task's scorers.
    scorers: tuple[Scorer, ...] = DEFAULT_SCORERS

    def generate_args(self) -> dict[str, Any]:
        """The settings inspect's ``eval()`` takes as generate config (unset ones left out)."""
        values = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "max_connections": self.max_connections,
        }
        return {name: value for name, value in values.items() if value is not None}


class EvalSpec(_Frozen):
    """Everything one run's evaluation job needs; ``version`` hashes all of it."""

    partition_key: str
    run_dir: str
    model: TorchtuneModel
    targets: tuple[EvalTarget, ...]
    tasks: tuple[TaskSpec, ...]
    data: EvalData
    settings: EvalSettings
    #: content hashes of the tokenizer files of the model evaluated (path -> sha256).
    tokenizer_files: dict[str, str] = {}

    @cached_property
    def version(self) -> str:
        """A short hash that changes exactly when the evaluation would: settings, tasks (their
        scripts' and imported modules' content), prompts, test data and tokenizer content, model
        loading and targets."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def input_digests(self) -> dict[str, str]:
        """Every file whose content the version covers, with the digest recorded: task scripts
        and the modules they import, the data file and the tokenizer files."""
        digests = {self.data.path: self.data.sha256, **self.tokenizer_files}
        for task in self.tasks:
            if task.script is not None and task.script_sha256 is not None:
                digests[task.script] = task.script_sha256
            digests.update(task.imports)
        return digests

    def input_files(self) -> list[Path]:
        """The files of :meth:`input_digests`, sorted (what a watcher must look at)."""
        return sorted(map(Path, self.input_digests()))

    def changed_inputs(self) -> list[Path]:
        """Input files whose content is no longer what this spec recorded: the evaluation
        changed on disk and registering the experiment again records it."""
        return [
            Path(path)
            for path, digest in sorted(self.input_digests().items())
            if _digest_or_missing(Path(path)) != digest
        ]

    @property
    def eval_dir(self) -> Path:
        """``<run_dir>/eval``: spec, results, job log and every task's logs."""
        return Path(self.run_dir) / EVAL_DIR

    @property
    def spec_path(self) -> Path:
        return self.eval_dir / SPEC_FILE

    def log_dir(self, task: str, label: str) -> Path:
        """Where inspect writes the ``.eval`` log of one task on one target."""
        return self.eval_dir / task / label / "logs"

    def expected_logs(self) -> list[tuple[str, str]]:
        """Every (task, label) pair the job evaluates, in the order it runs them."""
        return [(task, target.label) for target in self.targets for task in target.tasks]

    def task(self, name: str) -> TaskSpec:
        """The task called ``name`` (KeyError if the spec has none)."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    def write(self) -> bool:
        """Write ``eval_spec.json`` atomically; False when it already held exactly this."""
        document = {"version": self.version, **self.model_dump(mode="json")}
        return atomic_write_text(self.spec_path, json.dumps(document, indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> EvalSpec:
        """Read an ``eval_spec.json``; its version is recomputed from the content."""
        try:
            document = json.loads(Path(path).read_text())
            document.pop("version", None)
            return cls.model_validate(document)
        except (OSError, ValueError, ValidationError) as exc:
            raise CkError(
                f"{path}: not a readable eval spec ({exc}); materialize eval_log "
                "again to rewrite it"
            ) from None


def eval_spec_for(plan: RunPlan) -> EvalSpec:
    """The evaluation of one run: its targets, tasks, prompts, data and settings.

    Raises :class:`ExperimentFileError` (with line and fix) when the experiment cannot be
    evaluated as written: no ``evaluation:`` section, no saved epoch to evaluate, a prompt
    without ``{input}``, or a built-in task over data without a test split.
    """
    evaluation = plan.experiment.spec.evaluation
    if evaluation is None:
        raise _problem(
            plan,
            ("evaluation",),
            "the experiment has no `evaluation:` section",
            "add one with at least `tasks: [{name: ...}]`",
        )
    targets = _targets(plan, evaluation)
    if not targets:
        source = plan.config.sources.get("epochs_to_save") if plan.config else None
        raise _problem(
            plan,
            source.field if source and source.field else ("runs", plan.index),
            "epochs_to_save keeps no epoch, so there is nothing to evaluate",
            "name the epochs to keep, or leave this run out of `evaluation.matrix`",
        )
    used = {name for target in targets for name in target.tasks}
    run_prompts = _run_prompts(plan)
    tasks = tuple(
        _task_spec(plan, index, task, run_prompts)
        for index, task in enumerate(evaluation.tasks)
        if task.name in used
    )
    data = _test_data(plan, needed=any(t.is_builtin for t in tasks))
    model = _torchtune_model(plan)
    return EvalSpec(
        partition_key=plan.partition_key,
        run_dir=str(plan.run_dir),
        model=model,
        targets=tuple(targets),
        tasks=tasks,
        data=data,
        settings=_settings(evaluation),
        tokenizer_files=_tokenizer_files(plan, model),
    )


def _problem(plan: RunPlan, field: FieldPath, message: str, fix: str) -> ExperimentFileError:
    experiment = plan.experiment
    return ExperimentFileError(
        experiment.file,
        [Problem(field, f"run `{plan.run.name}`: {message}", fix, experiment.line_of(field))],
    )


def _targets(plan: RunPlan, evaluation: Evaluation) -> list[EvalTarget]:
    """Per target (epoch or base), the tasks the matrix selects; default: every task and epoch.

    Several matrix entries for one run add up (entry 1: task a on epoch 0, entry 2: task b on
    epoch 1 evaluates exactly those two pairs).
    """
    all_tasks = [task.name for task in evaluation.tasks]
    entries = [e for e in evaluation.matrix or [] if e.run == plan.run.name] or [
        MatrixEntry(run=plan.run.name)
    ]
    selected: dict[int | None, set[str]] = {}
    for entry in entries:
        epochs: list[int | None] = (
            [None] if plan.is_control else list(entry.epochs or plan.saved_epochs)
        )
        for epoch in epochs:
            selected.setdefault(epoch, set()).update(entry.tasks or all_tasks)
    targets = []
    for epoch in sorted(selected, key=lambda e: -1 if e is None else e):
        tasks = tuple(t for t in all_tasks if t in selected[epoch])
        if epoch is None:
            targets.append(EvalTarget(label=BASE_LABEL, path=str(plan.model_path), tasks=tasks))
            continue
        folder = str(plan.artifacts_dir / f"epoch_{epoch}")
        # a LoRA epoch is its adapter on the base model, loaded once for every epoch
        targets.append(
            EvalTarget(
                label=f"epoch_{epoch}", path=str(plan.model_path), adapter=folder, tasks=tasks
            )
            if plan.is_lora
            else EvalTarget(label=f"epoch_{epoch}", path=folder, tasks=tasks)
        )
    return targets


def _task_spec(plan: RunPlan, index: int, task: EvalTask, run_prompts: tuple[str, str]) -> TaskSpec:
    """One task, prompted as the task says or else as the run trained."""
    script = plan.experiment.resolve(task.script) if task.script else None
    prompt = task.prompt if task.prompt is not None else run_prompts[0]
    system_prompt = task.system_prompt if task.system_prompt is not None else run_prompts[1]
    if script is None and INPUT_PLACEHOLDER not in prompt:
        field = (
            ("evaluation", "tasks", index, "prompt")
            if task.prompt is not None
            else ("runs", plan.index)
        )
        raise _problem(
            plan,
            field,
            f"prompt {prompt!r} of task `{task.name}` has no {INPUT_PLACEHOLDER}",
            f"put {INPUT_PLACEHOLDER} where each row's input goes",
        )
    imports = local_imports(script, [script.parent, plan.experiment.file.parent]) if script else []
    return TaskSpec(
        name=task.name,
        script=str(script) if script else None,
        script_sha256=file_digest(script) if script else None,
        imports={str(path): file_digest(path) for path in imports},
        args=task.args,
        prompt=prompt,
        system_prompt=system_prompt,
    )


def _tokenizer_files(plan: RunPlan, model: TorchtuneModel) -> dict[str, str]:
    """The content hash of every tokenizer file the evaluated model loads (the run's tokenizer
    node; the base model's for a control run), so a changed tokenizer makes scores stale."""
    paths = [
        Path(str(model.tokenizer[arg]))
        for arg in plan.model.tokenizer_files
        if model.tokenizer.get(arg)
    ]
    return {str(path): _digest_or_missing(path) for path in paths}


def _digest_or_missing(path: Path) -> str:
    return file_digest(path) if path.is_file() else MISSING_FILE


def _run_prompts(plan: RunPlan) -> tuple[str, str]:
    """The run's prompt and system prompt: its config's for fine-tuned runs; for control runs
    the same precedence training would use (run parameter > controls > default)."""
    if plan.config is not None:
        return (
            plan.config.get("dataset.prompt", INPUT_PLACEHOLDER),
            plan.config.get("dataset.system_prompt", ""),
        )
    return (
        _control_run_value(plan, "dataset.prompt", INPUT_PLACEHOLDER),
        _control_run_value(plan, "dataset.system_prompt", ""),
    )


def _control_run_value(plan: RunPlan, path: str, default: str) -> str:
    """A control run's value for config ``path``, given by friendly name or dotted path."""
    for layer in (plan.run.parameters, plan.experiment.spec.controls):
        for name, value in layer.items():
            if parameters.config_path(name) == path:
                return str(value)
    return default


def _torchtune_model(plan: RunPlan) -> TorchtuneModel:
    """How the job loads targets: as the run's config tokenizes, on the device it asks for."""
    device = "cuda" if eval_gpus(plan) else "cpu"
    if plan.config is None:
        return TorchtuneModel.of(
            plan.model, plan.model_path, device=device, dtype="bf16" if device == "cuda" else "fp32"
        )
    return TorchtuneModel(
        builder=plan.model.builder,
        tokenizer=dict(plan.config.get("tokenizer")),
        model_type=plan.config.get("checkpointer.model_type", plan.model.model_type),
        checkpoint_files=plan.model.checkpoint_files,
        device=device,
        dtype=plan.config.get("dtype", "bf16" if device == "cuda" else "fp32"),
    )


def eval_gpus(plan: RunPlan) -> int:
    """GPUs an evaluation job asks for: what the model's size needs, never more than the run
    allows (``compute.gpus: 0`` keeps it on CPU; a 2-GPU training run evaluates on one)."""
    return min(plan.resources.gpus, plan.model.resources.gpus)


def _test_data(plan: RunPlan, *, needed: bool) -> EvalData:
    """The run's data file (its config's, for fine-tuned runs) and its test split's size."""
    data = plan.experiment.spec.data.training
    path = plan.experiment.resolve(data.path)
    input_key, output_key = data.input_key, data.output_key
    if plan.config is not None:
        if plan.config.get("dataset.source") == "json":  # a data file set in the controls
            path = Path(plan.config.get("dataset.data_files", path))
        input_key = plan.config.get("dataset.input_key", input_key)
        output_key = plan.config.get("dataset.output_key", output_key)
    if not path.exists():
        raise _problem(
            plan,
            ("data", "training", "path"),
            f"data file {path} not found",
            "point it at the JSON file with train/validation/test splits",
        )
    for message, fix in missing_rows(path, *([EVALUATION_NEEDS] if needed else [])):
        raise _problem(plan, ("data", "training", "path"), message, fix)
    return EvalData(
        path=str(path),
        sha256=data_digest(path),
        input_key=input_key,
        output_key=output_key,
        rows=split_sizes(path).get(TEST_SPLIT, 0),
    )


def _settings(evaluation: Evaluation) -> EvalSettings:
    """``evaluation:``'s settings; sampling only when asked for (or implied by temperature > 0)."""
    do_sample = (
        evaluation.do_sample if evaluation.do_sample is not None else bool(evaluation.temperature)
    )
    scorers = (
        tuple(s if isinstance(s, Scorer) else Scorer(name=s) for s in evaluation.scorers or ())
        or DEFAULT_SCORERS
    )
    return EvalSettings(
        temperature=evaluation.temperature,
        max_tokens=evaluation.max_tokens,
        seed=evaluation.seed,
        do_sample=do_sample,
        max_connections=evaluation.max_connections,
        scorers=scorers,
    )


def eval_specs_for(plan: ExperimentPlan) -> dict[str, EvalSpec]:
    """Every run's evaluation; all problems at once (ExperimentFileError) when any is refused.
    Empty when the experiment has no ``evaluation:`` section."""
    if plan.experiment.spec.evaluation is None:
        return {}
    specs: dict[str, EvalSpec] = {}
    problems: list[Problem] = []
    for run_plan in plan.runs.values():
        try:
            specs[run_plan.partition_key] = eval_spec_for(run_plan)
        except ExperimentFileError as exc:
            problems += exc.problems  # ExperimentFileError keeps each problem once
    if problems:
        raise ExperimentFileError(plan.experiment.file, problems)
    return specs
