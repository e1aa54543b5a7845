"""Plan every run of an experiment: its merged torchtune config, with provenance, and its job.

A run's config is built in layers, and every leaf remembers its layer:

1. **recipe**: the base recipe's config as torchtune ships it (or the built-in defaults);
2. **derived**: what the experiment implies: model builder, tokenizer and checkpointer from the
   model registry, the dataset and prompt, ``output_dir``, CPU settings when no GPU is asked for;
3. **controls**, then **run** parameters (friendly names, top-level keys or dotted paths);
4. **derived** again: ``lora_alpha = 2 x lora_rank`` unless given.

The merged config must pass torchtune's own validation before anything is written.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import yaml

from ck_dagster.catalog import parameters
from ck_dagster.catalog.models import MODELS, KnownModel
from ck_dagster.errors import CkError, did_you_mean, printable
from ck_dagster.experiment.data import TRAINING_NEEDS, data_digest, missing_rows, parquet_splits
from ck_dagster.experiment.data_file import data_file_problems
from ck_dagster.experiment.load import read_experiment
from ck_dagster.experiment.problems import ExperimentFileError, Problem
from ck_dagster.experiment.schema import Experiment, Run
from ck_dagster.experiment.yaml_lines import add_yaml12_numbers
from ck_dagster.fileio import sha256_file
from ck_dagster.finetune.catalog import TRAINING_RECIPES, recipe_catalog
from ck_dagster.finetune.cluster_profile import deployment_environment
from ck_dagster.finetune.merge import ProvenancedConfig, Source
from ck_dagster.finetune.torchtune_internals import read_config_text
from ck_dagster.finetune.validate import component_errors, save_results
from ck_dagster.slurm.preflight import Refusal, preflight
from ck_dagster.slurm.resources import Resources
from ck_dagster.slurm.script import JobEnvironment, JobScript, job_name_for

#: the recipe the built-in defaults are written for.
BUILTIN_RECIPE = "lora_finetune_single_device"
#: the dataset builder our configs use: it formats prompt + system prompt like evaluation does.
DATASET_COMPONENT = "ck_dagster.finetune.dataset.prompt_dataset"
#: the metric logger of runs with ``output.wandb_project``: DiskLogger and WandBLogger.
WANDB_LOGGER = "ck_dagster.training.metric_logging.DiskAndWandBLogger"
#: ck_dagster's recipes (validation loss, which epochs to keep), by the torchtune recipe each
#: extends, as ``tune run`` takes them (it runs a ``.py`` path as the module it names).
CK_RECIPES = {
    "lora_finetune_single_device": "ck_dagster/training/lora_recipe.py",
    "full_finetune_single_device": "ck_dagster/training/full_recipe.py",
}
#: config paths that hold where a run's outputs go: ck_dagster's to set, never a parameter.
OUTPUT_PATHS = frozenset({"output_dir", "checkpointer.output_dir"})
_INTERPOLATION_START = re.compile(r"(\\*)\$\{")
#: settings a job without a GPU needs (bf16, fused AdamW and activation offloading need CUDA).
CPU_SETTINGS = {
    "device": "cpu",
    "dtype": "fp32",
    "optimizer.fused": False,
    "enable_activation_offloading": False,
}


@dataclass(frozen=True)
class RunPlan:
    """One run, planned: what it trains with and how it is submitted (nothing written yet)."""

    experiment: Experiment
    run: Run
    index: int
    model: KnownModel
    model_path: Path
    #: the ``tune ls`` config the run starts from; None means the built-in defaults.
    base_recipe: str | None
    #: the torchtune recipe ``tune run`` runs; None for control runs.
    recipe: str | None
    nproc: int
    resources: Resources
    config: ProvenancedConfig | None
    job: JobScript | None
    #: the longest ``--time`` the cluster profile lets a resumed job ask for (None: no more).
    max_time: str | None = None

    @property
    def partition_key(self) -> str:
        return self.experiment.partition_key(self.run)

    @property
    def run_dir(self) -> Path:
        return self.experiment.run_dir(self.run)

    @property
    def artifacts_dir(self) -> Path:
        """torchtune's ``output_dir``: epoch checkpoints, metric logs and job logs (under
        ``output.base_directory`` when the file gives one)."""
        return self.experiment.output_dir(self.run)

    @property
    def is_control(self) -> bool:
        return self.run.is_control

    @cached_property
    def finetune_yaml(self) -> str | None:
        """The run's ``finetune.yaml`` text (None for control runs)."""
        if self.config is None:
            return None
        header = "".join(
            printable(line) + "\n"
            for line in (
                f"# torchtune config for run {self.partition_key}, written by ck_dagster from",
                f"# {self.experiment.file} (base: {self.base_recipe or 'built-in defaults'}).",
                f"# Train by hand: tune run {self.recipe} --config finetune.yaml",
            )
        )
        written = written_config(self.config)
        text = header + yaml.dump(written, Dumper=_ConfigDumper, sort_keys=False, width=100)
        return check_reads_back(text, written)

    @cached_property
    def slurm_script(self) -> str | None:
        """The run's ``finetune.slurm`` text (None for control runs)."""
        return self.job.render() if self.job else None

    @cached_property
    def spec_version(self) -> str:
        """A hash of everything the run trains with: its config, its job's resources and
        command, and the training data's content. How a job activates its software (a
        deployment setting) is left out, so moving a deployment does not make runs stale."""
        if self.is_control:
            parts = ["control", self.model.name, str(self.model_path)]
        else:
            assert self.job is not None
            json_file = self.config is not None and self.config.get("dataset.source") == "json"
            data = (
                Path(self.config.get("dataset.data_files"))
                if json_file
                else self.experiment.resolve(self.experiment.spec.data.training.path)
            )
            parts = [
                self.finetune_yaml or "",
                repr(self.resources),
                " ".join(self.job.command),
                data_digest(data),
            ]
            parts += [
                file_digest(Path(folder) / self.job.command[-3]) for folder in self.job.python_path
            ]  # a custom recipe file's content
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def epochs(self) -> int:
        """Epochs the run trains (0 for control runs)."""
        return int(self.config.get("epochs", 1)) if self.config else 0

    @property
    def saved_epochs(self) -> tuple[int, ...]:
        """The epochs whose checkpoints training keeps (``epochs_to_save``,
        ``save_last_epoch_only``; every epoch by default)."""
        if self.config is None:
            return ()
        return parameters.kept_epochs(self.config.config)

    @property
    def is_lora(self) -> bool:
        """Whether the run trains LoRA adapters (its epochs hold an adapter to apply)."""
        return (
            self.config is not None
            and self.config.get("model._component_") == self.model.lora_builder
        )

    def provenance(self) -> list[tuple[str, Any, Source]]:
        """Every set value with its source, in config order."""
        return list(self.config.leaves()) if self.config else []


@dataclass(frozen=True)
class ExperimentPlan:
    """All runs of an experiment, planned and validated."""

    experiment: Experiment
    runs: dict[str, RunPlan]

    def preflight(self) -> list[Refusal] | None:
        """Training jobs the SLURM cluster could never run (see :func:`preflight_runs`)."""
        return preflight_runs(self.runs.values())


def preflight_runs(runs: Iterable[RunPlan]) -> list[Refusal] | None:
    """Training jobs of ``runs`` the SLURM cluster could never run, with what it lacks; None
    when no SLURM controller answers (then nothing was asked)."""
    return preflight(
        (run.partition_key, run.resources, run.slurm_script or "")
        for run in runs
        if not run.is_control
    )


def plan_experiment(
    experiment: Experiment,
    environment: JobEnvironment | None = None,
    only: Iterable[str] | None = None,
) -> ExperimentPlan:
    """Plan every run of a loaded experiment (or the runs named in ``only``).

    Raises :class:`ExperimentFileError` listing every run's problems when any config is refused.
    """
    runs, problems = _plan_runs(experiment, environment, only)
    if problems:
        raise ExperimentFileError(experiment.file, problems)
    return ExperimentPlan(experiment, runs)


def plan_experiment_file(
    path: str | Path, environment: JobEnvironment | None = None
) -> ExperimentPlan:
    """Read and plan an experiment file, reporting the problems of every stage in one pass:
    the file's structure, its cross-references and every valid run's merged config."""
    reading = read_experiment(path)
    problems = list(reading.problems)
    runs: dict[str, RunPlan] = {}
    if reading.experiment is not None:
        runs, plan_problems = _plan_runs(reading.experiment, environment)
        problems += plan_problems
    if problems or reading.experiment is None:  # named as the user typed it
        raise ExperimentFileError(Path(path).expanduser(), problems)
    return ExperimentPlan(reading.experiment, runs)


def _plan_runs(
    experiment: Experiment, environment: JobEnvironment | None, only: Iterable[str] | None = None
) -> tuple[dict[str, RunPlan], list[Problem]]:
    """The plans of the runs that are valid, and the problems of the others (with lines)."""
    environment = environment or deployment_environment()
    wanted = set(only) if only is not None else None
    base_models = {m.name for m in experiment.spec.models.base}
    problems: list[Problem] = []
    runs: dict[str, RunPlan] = {}
    for index, run in experiment.indexed_runs():
        if wanted is not None and run.name not in wanted:
            continue
        if run.model not in MODELS or run.model not in base_models:
            # the model is reported when the file was read; its values are checked all the same
            problems += _value_problems(experiment, run, index)
            continue
        planner = _RunPlanner(experiment, run, index, environment)
        plan = planner.plan()
        problems += planner.problems
        if plan is not None:
            runs[run.name] = plan
    save_results()
    problems += _matrix_problems(experiment, runs)
    return runs, [
        Problem(p.path, p.message, p.fix, p.line or experiment.line_of(p.path)) for p in problems
    ]


def _value_problems(experiment: Experiment, run: Run, index: int) -> list[Problem]:
    """The friendly parameters of controls and ``run`` whose values are wrong, checked without
    a recipe (for runs that cannot be planned), so that no problem waits for the next pass."""
    given = [
        (name, value, ("controls", name))
        for name, value in experiment.spec.controls.items()
        if name not in parameters.CONTROL_KEYS
    ]
    given += [
        (name, value, ("runs", index, "parameters", name)) for name, value in run.parameters.items()
    ]
    return [
        Problem(field, f"`{name}: {value!r}` {reason}")
        for name, value, field in given
        if name in parameters.PARAMETERS and (reason := parameters.check_value(name, value))
    ]


class _RunPlanner:
    """Builds one run's plan; problems accumulate instead of raising."""

    def __init__(self, experiment: Experiment, run: Run, index: int, environment: JobEnvironment):
        self.experiment = experiment
        self.run = run
        self.index = index
        self.environment = environment
        self.problems: list[Problem] = []
        self.model = MODELS[run.model]
        self.model_path = experiment.resolve(experiment.model_entry(run).path)
        self.controls = experiment.spec.controls

    def plan(self) -> RunPlan | None:
        resources = self.environment.profile.request(
            self.model.size, *compute_layers(self.experiment, self.run)
        )
        base_recipe = self.controls.get("base_recipe")
        if self.run.is_control:
            return RunPlan(
                self.experiment,
                self.run,
                self.index,
                self.model,
                self.model_path,
                base_recipe,
                None,
                0,
                resources,
                None,
                None,
            )
        recipe, base = self._base(base_recipe)
        if base is None:
            self.problems += _value_problems(self.experiment, self.run, self.index)
            return None
        recipe, nproc = self._recipe_for_gpus(recipe, resources.gpus)
        config = ProvenancedConfig()
        recipe_source = Source(
            "recipe",
            base_recipe or "built-in defaults",
            ("controls", "base_recipe") if base_recipe else None,
        )
        config.merge(base, recipe_source)
        self._derive(config, recipe, resources, recipe_source)
        self._apply_controls(config)
        self._apply_run_parameters(config)
        self._derive_after(config)
        if self.problems:
            return None
        self._validate(config)
        recipe, python_path = self._recipe_to_run(recipe, nproc, config)
        if self.problems:
            return None
        job = self._job(recipe, nproc, resources, python_path)
        return RunPlan(
            self.experiment,
            self.run,
            self.index,
            self.model,
            self.model_path,
            base_recipe,
            recipe,
            nproc,
            resources,
            config,
            job,
            self.environment.profile.max_time,
        )

    # -- layers -------------------------------------------------------------------------------

    def _base(self, base_recipe: Any) -> tuple[str, dict[str, Any] | None]:
        catalog = recipe_catalog()
        if base_recipe is None:
            return BUILTIN_RECIPE, catalog.builtin_defaults()
        field = ("controls", "base_recipe")
        if not isinstance(base_recipe, str) or base_recipe not in catalog.configs:
            fix = (
                did_you_mean(str(base_recipe), catalog.configs)
                or "run `ck-dagster recipes` for the configs torchtune has"
            )
            self.problems.append(Problem(field, f"unknown base recipe `{base_recipe}`", fix))
            return "", None
        recipe = catalog.get(base_recipe).recipe
        if recipe not in TRAINING_RECIPES:
            self.problems.append(
                Problem(
                    field,
                    f"`{base_recipe}` is a config of `{recipe}`, not of a fine-tuning recipe",
                    "use a *_lora_* or *_full* config (see `ck-dagster recipes`)",
                )
            )
            return "", None
        return recipe, catalog.load(base_recipe)

    def _recipe_for_gpus(self, recipe: str, gpus: int) -> tuple[str, int]:
        """More than one GPU switches a single-device recipe to its distributed twin; a
        distributed recipe needs a GPU (on one, ``tune run --nproc_per_node 1`` runs it)."""
        if recipe.endswith("_distributed") and gpus == 0:
            single = recipe.replace("_distributed", "_single_device")
            self.problems.append(
                Problem(
                    ("controls", "base_recipe"),
                    f"`{recipe}` is a distributed recipe, which "
                    "needs GPUs, but this run asks for none",
                    f"use a config of `{single}`, or set `compute.gpus`",
                )
            )
            return recipe, 1
        if gpus <= 1:
            return recipe, 1
        twin = recipe.replace("_single_device", "_distributed")
        if twin not in recipe_catalog().recipes:
            self.problems.append(
                Problem(
                    ("runs", self.index, "compute", "gpus"),
                    f"{gpus} GPUs need a distributed recipe, but `{recipe}` "
                    "has no distributed twin",
                    "ask for 1 GPU",
                )
            )
        return twin, gpus

    def _derive(
        self, config: ProvenancedConfig, recipe: str, resources: Resources, recipe_source: Source
    ) -> None:
        """What the experiment implies: model files, dataset, prompt, output_dir, device."""
        model, data = self.model, self.experiment.spec.data.training
        model_field = ("models", "base", self._model_index())
        derived = Source("derived", f"model {model.name}", model_field)
        if self.experiment.spec.output.base_directory is None:
            output_source = Source(
                "derived", "<experiment.directory>/<run>/artifacts", ("experiment",)
            )
        else:
            output_source = Source(
                "derived",
                "output.base_directory + checkpoint_pattern",
                ("output", "base_directory"),
            )
        config.set("output_dir", str(self.experiment.output_dir(self.run)), output_source)
        if recipe.startswith("lora_"):
            config.set("model._component_", model.lora_builder, derived)
        else:
            config.set("model", {"_component_": model.builder}, derived)
        max_seq_len = config.get("tokenizer.max_seq_len")
        config.set(
            "tokenizer",
            {
                "_component_": model.tokenizer,
                **{arg: str(self.model_path / rel) for arg, rel in model.tokenizer_files.items()},
            },
            derived,
        )
        config.set("tokenizer.max_seq_len", max_seq_len, recipe_source)
        config.set("checkpointer.checkpoint_dir", str(self.model_path), derived)
        config.set("checkpointer.checkpoint_files", model.checkpoint_files, derived)
        config.set("checkpointer.model_type", model.model_type, derived)
        config.set("checkpointer.recipe_checkpoint", None, derived)
        data_source = Source("derived", "data.training", ("data", "training"))
        data_path = self.experiment.resolve(data.path)
        files = (
            {"source": "json", "data_files": str(data_path), "field": "train"}
            if data.format == "json"
            else {
                "source": "parquet",
                "data_files": [str(f) for f in parquet_splits(data_path).get("train", [])],
            }
        )
        config.set(
            "dataset",
            {
                "_component_": DATASET_COMPONENT,
                **files,
                "input_key": data.input_key,
                "output_key": data.output_key,
                "prompt": "{input}",
                "system_prompt": "",
                "packed": False,
            },
            data_source,
        )
        project = self.experiment.spec.output.wandb_project
        if project is not None:
            self._wandb_logger(config, project)
        if resources.gpus == 0:
            config.merge(
                CPU_SETTINGS,
                Source("derived", "no GPU requested", ("runs", self.index, "compute", "gpus")),
            )
        config.merge(model.config_overrides, derived)

    def _same_setting_twice(self, names: Iterable[str], where: tuple[str | int, ...]) -> None:
        """``lr`` and ``learning_rate`` (or a friendly name and its path) in one layer."""
        seen: dict[str, str] = {}
        for name in names:
            path = parameters.config_path(name)
            if path in seen:
                self.problems.append(
                    Problem(
                        (*where, name),
                        f"`{name}` and `{seen[path]}` both set `{path}`",
                        "keep one of them",
                    )
                )
            seen.setdefault(path, name)

    def _wandb_logger(self, config: ProvenancedConfig, project: str) -> None:
        """``output.wandb_project``: W&B beside the DiskLogger, run named after the run."""
        field = ("output", "wandb_project")
        if importlib.util.find_spec("wandb") is None:
            self.problems.append(
                Problem(
                    field,
                    "wandb is not installed here",
                    "pip install "
                    "'ck-dagster[wandb]' (in the jobs' environment too), "
                    "or remove `wandb_project`",
                )
            )
            return
        outputs = self.experiment.output_dir(self.run)
        config.set(
            "metric_logger",
            {
                "_component_": WANDB_LOGGER,
                "log_dir": str(outputs / "logs"),
                "project": project,
                "name": self.run.name,
                "wandb_dir": str(outputs),
            },
            Source("derived", "output.wandb_project", field),
        )

    def _apply_controls(self, config: ProvenancedConfig) -> None:
        self._same_setting_twice(self.controls, ("controls",))
        for name, value in self.controls.items():
            if name in parameters.CONTROL_KEYS:
                continue
            self._apply(
                config, name, value, Source("controls", f"controls.{name}", ("controls", name))
            )

    def _apply_run_parameters(self, config: ProvenancedConfig) -> None:
        self._same_setting_twice(self.run.parameters, ("runs", self.index, "parameters"))
        for name, value in self.run.parameters.items():
            self._apply(
                config,
                name,
                value,
                Source(
                    "run",
                    f"runs[{self.run.name}].parameters.{name}",
                    ("runs", self.index, "parameters", name),
                ),
            )

    def _apply(self, config: ProvenancedConfig, name: str, value: Any, source: Source) -> None:
        assert source.field is not None
        if not parameters.is_known_name(name, config.config):
            known = [*parameters.PARAMETERS, *config.config]
            fix = did_you_mean(name, known) or (
                "use a friendly name ("
                + ", ".join(sorted(parameters.PARAMETERS)[:6])
                + ", ...), a top-level config key, or a dotted torchtune path like optimizer.lr"
            )
            self.problems.append(Problem(source.field, f"unknown parameter `{name}`", fix))
            return
        reason = parameters.check_value(name, value)
        if reason:
            self.problems.append(Problem(source.field, f"`{name}: {value!r}` {reason}"))
            return
        path = parameters.config_path(name)
        if path in OUTPUT_PATHS:
            self.problems.append(
                Problem(
                    source.field,
                    f"`{path}` is where ck_dagster keeps the run's checkpoints and "
                    "logs (<base_directory>/<run>/, or <directory>/<run>/artifacts), which "
                    "training, evaluation and the report find there",
                    "remove it; to keep outputs on other storage, set `output.base_directory`",
                )
            )
            return
        if path == "dataset.data_files":
            value = self._data_files(value, source)
            if value is None:
                return
        current = config.get(path)
        if isinstance(current, dict) and current and not isinstance(value, dict):
            self.problems.append(
                Problem(
                    source.field,
                    f"`{name}: {value!r}` would replace the whole `{path}` section of the config",
                    f"set one of its fields instead, e.g. `{path}.{next(iter(current))}`",
                )
            )
            return
        section = path.split(".", 1)[0]
        given = [*self.controls, *self.run.parameters]
        if (
            "." in path
            and not isinstance(config.config.get(section), dict)
            and f"{section}._component_" not in map(parameters.config_path, given)
        ):
            recipe = self.controls.get("base_recipe") or "the built-in defaults"
            self.problems.append(
                Problem(
                    source.field,
                    f"`{name}` sets `{path}`, but {recipe} has no `{section}` section",
                    f"remove it, or set `{section}._component_` too",
                )
            )
            return
        config.set(path, value, source)

    def _data_files(self, value: Any, source: Source) -> str | None:
        """A ``dataset.data_files`` override, checked like ``data.training.path``."""
        assert source.field is not None
        if not isinstance(value, str):
            self.problems.append(
                Problem(
                    source.field,
                    "`dataset.data_files` must be the path of one JSON file",
                    "give a path, or leave it out to use data.training.path",
                )
            )
            return None
        data = self.experiment.resolve(value)
        training = self.experiment.spec.data.training
        found = [
            Problem(source.field, message, fix)
            for message, fix in data_file_problems(data, training.input_key, training.output_key)
            or missing_rows(data, TRAINING_NEEDS)
        ]
        self.problems += found
        return None if found else str(data)

    def _derive_after(self, config: ProvenancedConfig) -> None:
        rank = config.get("model.lora_rank")
        alpha_source = config.sources.get("model.lora_alpha")
        derived = alpha_source is None or alpha_source.kind in ("recipe", "derived")
        if rank is not None and derived:
            config.set("model.lora_alpha", 2 * rank, Source("derived", "2 x model.lora_rank"))
        if config.get("validation_during_training"):
            source = config.sources["validation_during_training"]
            config.set(
                "dataset_val",
                {**config.get("dataset"), "field": "validation"},
                Source("derived", "the validation split of data.training", source.field),
            )
        self._check_checkpoint_options(config)

    def _check_checkpoint_options(self, config: ProvenancedConfig) -> None:
        """Refuse checkpoint and validation options that would change nothing or contradict."""

        def problem(key: str, message: str, fix: str) -> None:
            source = config.sources[key]
            assert source.field is not None
            self.problems.append(Problem(source.field, message, fix))

        lora = config.get("model._component_") == self.model.lora_builder
        for key in ("save_adapter_weights_only", "stash_adapter_weights"):
            if config.get(key) and not lora:
                problem(
                    key,
                    f"`{key}` is for LoRA runs, and this run is a full fine-tune",
                    "remove it, or use a *_lora_* base recipe",
                )
        if config.get("stash_adapter_weights") and config.get("save_adapter_weights_only"):
            problem(
                "stash_adapter_weights",
                "with save_adapter_weights_only the epoch folders "
                "hold only the adapter: there are no merged weights to stash it away from",
                "remove stash_adapter_weights",
            )
        if config.get("run_val_every_n_steps") and not config.get("validation_during_training"):
            problem(
                "run_val_every_n_steps",
                "validation runs only with validation_during_training: true",
                "set validation_during_training: true",
            )
        epochs = int(config.get("epochs", 1))
        listed = parameters.parse_epochs(config.get("epochs_to_save", "all"))
        if listed and max(listed) >= epochs:
            problem(
                "epochs_to_save",
                f"the run trains {epochs} epoch(s), numbered from 0, so "
                f"there is no epoch {max(listed)}",
                f"use epochs 0 to {epochs - 1}",
            )
        if config.get("save_last_epoch_only") and listed is not None and listed != (epochs - 1,):
            problem(
                "save_last_epoch_only",
                "save_last_epoch_only keeps only the last epoch, but epochs_to_save names others",
                "set one of them",
            )

    def _recipe_to_run(
        self, recipe: str, nproc: int, config: ProvenancedConfig
    ) -> tuple[str, tuple[str, ...]]:
        """What ``tune run`` runs, and folders the job puts on PYTHONPATH for it: the user's
        ``controls.custom_recipe``, ck_dagster's own recipe when the config asks for what
        only that does (validation, which epochs to keep), else torchtune's recipe."""
        custom = self.controls.get("custom_recipe")
        field = ("controls", "custom_recipe")
        if custom is not None:
            reason = parameters.check_recipe_reference(custom)
            if reason:
                self.problems.append(Problem(field, f"`custom_recipe: {custom!r}` {reason}"))
                return recipe, ()
            if not custom.endswith(".py"):  # tune run turns a .py path into a module path
                return custom.replace(".", "/") + ".py", ()
            file = self.experiment.resolve(custom)
            if not file.is_file():
                self.problems.append(
                    Problem(
                        field,
                        f"recipe file {file} not found",
                        "give a .py file (relative to the experiment "
                        "file) or a module path like my_pkg.my_recipe",
                    )
                )
            return file.name, (str(file.parent),)
        present = [key for key in parameters.CK_RECIPE_KEYS if key in config.config]
        wanted = [key for key in present if config.config[key] not in (None, False, "all")]
        if not wanted:  # e.g. v1's `validation_during_training: false`: torchtune's recipe
            for key in present:  # does just that, and would not read the key
                config.remove(key)
            return recipe, ()
        if recipe not in CK_RECIPES:
            source = config.sources[wanted[0]]
            assert source.field is not None
            self.problems.append(
                Problem(
                    source.field,
                    f"`{wanted[0]}` needs ck_dagster's single-device recipe, and "
                    f"this run uses {nproc} GPUs (`{recipe}`)",
                    "ask for 1 GPU, or remove it",
                )
            )
            return recipe, ()
        return CK_RECIPES[recipe], ()

    # -- checks and job -----------------------------------------------------------------------

    def _validate(self, config: ProvenancedConfig) -> None:
        """torchtune's own check: components import, arguments match their signatures."""
        for node, argument, message in component_errors(written_config(config)):
            source = (
                config.sources.get(f"{node}.{argument}") if argument else None
            ) or _most_specific_source(config, node)
            field = source.field if source and source.field else ("runs", self.index)
            self.problems.append(
                Problem(
                    field,
                    f"torchtune refuses `{node}` for run `{self.run.name}`: {message}",
                    f"set by {source.origin}" if source else None,
                )
            )

    def _job(
        self, recipe: str, nproc: int, resources: Resources, python_path: tuple[str, ...]
    ) -> JobScript:
        run_dir = self.experiment.run_dir(self.run)
        outputs = self.experiment.output_dir(self.run)
        command = ["tune", "run"]
        if nproc > 1 or recipe.endswith("_distributed"):  # torchrun launches these
            command += ["--nproc_per_node", str(nproc)]
        command += [recipe, "--config", "finetune.yaml"]
        return JobScript(
            job_name=job_name_for(self.experiment.name, self.run.name, "train"),
            workdir=run_dir,
            log_path=outputs / "slurm-%j.out",
            resources=resources,
            command=command,
            environment=self.environment,
            python_path=python_path,
            description=(
                f"Training job for run {self.experiment.partition_key(self.run)}, "
                "written by ck_dagster.\nSubmit by hand from this folder with: "
                f"mkdir -p {shlex.quote(str(outputs))} && sbatch finetune.slurm"
            ),
        )

    def _model_index(self) -> int:
        names = [m.name for m in self.experiment.spec.models.base]
        return names.index(self.run.model)


def compute_layers(experiment: Experiment, run: Run) -> list[dict[str, Any]]:
    """A run's SLURM overrides of its profile, in order: the experiment's ``compute:``, then
    the run's own (with v1's ``runs[].mig``)."""
    layers = [
        block.model_dump(exclude_unset=True, exclude_none=True)
        for block in (experiment.spec.compute, run.compute)
        if block is not None
    ]
    if run.mig is not None:
        layers.append({"mig": run.mig})
    return layers


class _ConfigDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Writes multi-line strings (prompts) as readable ``|`` blocks, and quotes text that
    OmegaConf would read as a number (``1e-4``)."""


_ConfigDumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)
add_yaml12_numbers(_ConfigDumper)


def written_config(config: ProvenancedConfig) -> dict[str, Any]:
    """The config as ``finetune.yaml`` holds it: text that did not come from the recipe (a
    prompt, a path, any parameter) has OmegaConf's ``${`` escaped, so it trains as written
    instead of being resolved (``${oc.env:HOME}`` stays those characters).

    torchtune resolves a component's node twice (``OmegaConf.resolve``, then ``to_object``
    in ``config.instantiate``), so text inside a component is escaped twice; a top-level value
    the recipe reads itself, once.
    """
    written = copy.deepcopy(config.config)
    for path, value, source in config.leaves():
        if source.kind != "recipe" and "${" in json.dumps(value):
            *parents, last = path.split(".")
            node = written
            for part in parents:
                node = node[part]
            top = config.config.get(parents[0]) if parents else None
            times = 2 if isinstance(top, dict) and "_component_" in top else 1
            for _ in range(times):
                node[last] = _escaped(node[last])
    return written


def _escaped(value: Any) -> Any:
    """Every string in ``value`` with each ``${`` (and the backslashes before it) escaped."""
    if isinstance(value, str):
        return _INTERPOLATION_START.sub(lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    return value


def check_reads_back(text: str, meant: dict[str, Any]) -> str:
    """``text`` when torchtune's reader (OmegaConf) reads it back as ``meant``; a
    :class:`CkError` otherwise, so a config that would train on something else is never
    written."""
    try:
        read = read_config_text(text)
    except Exception as exc:  # noqa: BLE001 - any failure to read it back is the same refusal
        read = f"unreadable ({exc})"
    if read != meant:
        raise CkError(
            "the torchtune config would not read back as written; nothing was "
            "written. Please report this with the experiment file"
        )
    return text


def file_digest(path: Path) -> str:
    """SHA-256 of a file, cached while its size and mtime stay the same."""
    stat = path.stat()
    return _digest(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _most_specific_source(config: ProvenancedConfig, node: str) -> Source | None:
    """The most user-facing source among a config node's leaves (run > controls > ...)."""
    rank = {"run": 0, "controls": 1, "derived": 2, "recipe": 3}
    candidates = [
        s for path, s in config.sources.items() if path == node or path.startswith(node + ".")
    ]
    return min(candidates, key=lambda s: rank[s.kind], default=None)


def _matrix_problems(experiment: Experiment, runs: dict[str, RunPlan]) -> list[Problem]:
    evaluation = experiment.spec.evaluation
    problems = []
    for index, entry in enumerate(evaluation.matrix or [] if evaluation else []):
        plan = runs.get(entry.run)
        if plan is None or not entry.epochs:
            continue
        if plan.is_control:
            problems.append(
                Problem(
                    ("evaluation", "matrix", index, "epochs"),
                    f"control run `{entry.run}` has no epochs: its base model is evaluated once",
                    "remove `epochs` from this entry",
                )
            )
            continue
        for e_index, epoch in enumerate(entry.epochs):
            if epoch >= plan.epochs:
                problems.append(
                    Problem(
                        ("evaluation", "matrix", index, "epochs", e_index),
                        f"run `{entry.run}` trains {plan.epochs} epoch(s), numbered from 0, "
                        f"so there is no epoch {epoch}",
                        f"use 0 to {plan.epochs - 1}",
                    )
                )
            elif epoch not in plan.saved_epochs:
                kept = ", ".join(map(str, plan.saved_epochs)) or "none"
                problems.append(
                    Problem(
                        ("evaluation", "matrix", index, "epochs", e_index),
                        f"run `{entry.run}` keeps the checkpoints of epochs {kept} "
                        f"(epochs_to_save), not of epoch {epoch}",
                        "evaluate a kept epoch, or keep this one",
                    )
                )
    return problems
