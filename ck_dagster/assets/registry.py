"""Registering experiments: runs become partitions, their specs become observed data versions.

The Dagster instance is the registry. Each run's partition key is added to the ``runs``
partitions, and the run's spec (a hash of exactly what it trains with) is reported as an
observation of the ``run_spec`` asset, with the experiment file's path in its metadata.
An edited run thus gets a new data version and everything downstream of it shows as stale.
Registering never deletes anything: runs gone from the file are reported, not removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    MetadataValue,
)

from ck_dagster.assets.dagster_internals import data_version_tags, report_observations
from ck_dagster.assets.partitions import experiments_partitions, runs_partitions, split_key
from ck_dagster.errors import CkError, name_list
from ck_dagster.evaluation.spec import EvalSpec, eval_specs_for
from ck_dagster.experiment.load import load_experiment
from ck_dagster.finetune.plan import (
    ExperimentPlan,
    RunPlan,
    plan_experiment,
    plan_experiment_file,
)
from ck_dagster.slurm.script import JobEnvironment

RUN_SPEC = AssetKey("run_spec")
EVAL_SPEC = AssetKey("eval_spec")


@dataclass(frozen=True)
class RegisteredRun:
    """What the instance knows of a run: where it came from, its spec version, its folder."""

    partition_key: str
    experiment_file: Path
    spec_version: str
    run_dir: Path
    #: the torchtune recipe it trains with (None for control runs).
    recipe: str | None


@dataclass
class Registration:
    """What registering one experiment file adds, changes and leaves alone."""

    plan: ExperimentPlan
    #: each run's evaluation (empty when the experiment has no `evaluation:` section).
    eval_specs: dict[str, EvalSpec] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: registered runs whose evaluation (settings, tasks, task code, prompts) changed.
    eval_changed: list[str] = field(default_factory=list)
    #: whether the experiment's name is not yet a partition of ``experiments`` (its report's).
    new_experiment: bool = False

    @property
    def observations(self) -> list[AssetObservation]:
        """A ``run_spec`` observation for every new or changed run, an ``eval_spec`` one for
        every new run and every run whose evaluation changed."""
        runs = [
            run_spec_observation(self.plan.runs[split_key(key)[1]])
            for key in self.new + self.changed
        ]
        evals = [
            eval_spec_observation(self.eval_specs[key])
            for key in self.new + self.eval_changed
            if key in self.eval_specs
        ]
        return runs + evals

    def summary(self) -> str:
        """A few lines saying what happened, for the terminal and sensor logs."""
        experiment = self.plan.experiment
        lines = [
            f"{experiment.name} ({experiment.file}): {len(self.plan.runs)} runs, "
            f"{len(self.new)} new, {len(self.changed)} changed, "
            f"{len(self.unchanged)} unchanged"
        ]
        for keys, what in (
            (self.changed, "changed (their configs are now stale)"),
            (self.eval_changed, "evaluation changed (their eval logs are now stale)"),
            (self.removed, "no longer in the file (kept, nothing deleted)"),
        ):
            if keys:
                lines.append(f"  {what}: {name_list(keys)}")
        return "\n".join(lines)


def run_spec_observation(plan: RunPlan) -> AssetObservation:
    """The observation that records a run's spec version and where it came from."""
    return AssetObservation(
        asset_key=RUN_SPEC,
        partition=plan.partition_key,
        tags=data_version_tags(plan.spec_version),
        metadata={
            "experiment_file": MetadataValue.path(str(plan.experiment.file)),
            "run_dir": MetadataValue.path(str(plan.run_dir)),
            "recipe": plan.recipe or "",
            "run_type": plan.run.type,
            "model": plan.model.name,
            "base_recipe": plan.base_recipe or "built-in defaults",
            "spec_version": plan.spec_version,
            **{
                key: value if isinstance(value, (str, int, float)) else MetadataValue.json(value)
                for key, value in plan.experiment.information(plan.run).items()
            },
        },
    )


def eval_spec_observation(spec: EvalSpec) -> AssetObservation:
    """The observation that records a run's evaluation version."""
    return AssetObservation(
        asset_key=EVAL_SPEC,
        partition=spec.partition_key,
        tags=data_version_tags(spec.version),
        metadata={
            "tasks": ", ".join(task.name for task in spec.tasks),
            "targets": ", ".join(target.label for target in spec.targets),
            "settings": MetadataValue.json(spec.settings.model_dump(mode="json")),
            "spec_version": spec.version,
        },
    )


def prepare_registration(
    instance: DagsterInstance, path: str | Path, environment: JobEnvironment | None = None
) -> Registration:
    """Validate an experiment file and work out what registering it changes.

    Raises ``ExperimentFileError`` for a bad file, and ``CkError`` when another file already
    registered an experiment of the same name (its runs are never overwritten).
    """
    plan = plan_experiment_file(path, environment)
    experiment = plan.experiment
    eval_specs = eval_specs_for(plan)
    known = [k for k in registered_keys(instance) if split_key(k)[0] == experiment.name]
    registered = registered_runs(instance, known)
    eval_versions = registered_versions(instance, EVAL_SPEC, known)
    for run in registered.values():
        if run.experiment_file != experiment.file:
            raise CkError(
                f"{experiment.file}: experiment `{experiment.name}` is already registered from "
                f"{run.experiment_file}; its runs are not overwritten. Give this experiment "
                "another `experiment.name`, or register the file it came from"
            )
    is_new = not instance.has_dynamic_partition(experiments_partitions.name, experiment.name)
    registration = Registration(plan, eval_specs, new_experiment=is_new)
    for run_plan in plan.runs.values():
        key = run_plan.partition_key
        previous = registered.get(key)
        if key not in known:
            registration.new.append(key)
            continue
        if previous is None or previous.spec_version != run_plan.spec_version:
            registration.changed.append(key)
        else:
            registration.unchanged.append(key)
        if key in eval_specs and eval_versions.get(key) != eval_specs[key].version:
            registration.eval_changed.append(key)
    file_keys = {p.partition_key for p in plan.runs.values()}
    registration.removed = [key for key in known if key not in file_keys]
    return registration


def apply_registration(instance: DagsterInstance, registration: Registration) -> None:
    """Add the new partitions (runs, and the experiment) and record every new or changed
    run's spec."""
    if registration.new:
        instance.add_dynamic_partitions(runs_partitions.name, registration.new)
    if registration.new_experiment:
        instance.add_dynamic_partitions(
            experiments_partitions.name, [registration.plan.experiment.name]
        )
    report_observations(instance, registration.observations)


def registered_keys(instance: DagsterInstance) -> list[str]:
    """Every registered run's partition key."""
    return list(instance.get_dynamic_partitions(runs_partitions.name))


def registered_runs(
    instance: DagsterInstance, partition_keys: Iterable[str]
) -> dict[str, RegisteredRun]:
    """The latest registration of each key (keys never registered are left out)."""
    found = {}
    for key, observation in latest_observations(instance, RUN_SPEC, partition_keys).items():
        meta = observation.metadata
        found[key] = RegisteredRun(
            key,
            Path(str(meta["experiment_file"].value)),
            observation.data_version or "",
            Path(str(meta["run_dir"].value)),
            str(meta["recipe"].value) or None,
        )
    return found


def registered_versions(
    instance: DagsterInstance, asset_key: AssetKey, partition_keys: Iterable[str]
) -> dict[str, str]:
    """The data version last observed for each key of a spec asset."""
    return {
        key: observation.data_version or ""
        for key, observation in latest_observations(instance, asset_key, partition_keys).items()
    }


def latest_observations(
    instance: DagsterInstance, asset_key: AssetKey, partition_keys: Iterable[str]
) -> dict[str, AssetObservation]:
    """The newest observation of each partition of ``asset_key`` (missing ones left out)."""
    wanted = set(partition_keys)
    found: dict[str, AssetObservation] = {}
    cursor = None
    while wanted - found.keys():
        result = instance.fetch_observations(
            AssetRecordsFilter(asset_key=asset_key, asset_partitions=sorted(wanted - found.keys())),
            limit=500,
            cursor=cursor,
        )
        for record in result.records:
            if record.partition_key is not None and record.partition_key not in found:
                assert record.asset_observation is not None
                found[record.partition_key] = record.asset_observation
        if not result.has_more:
            break
        cursor = result.cursor
    return found


@lru_cache(maxsize=16)
def _plan_file(
    file: Path, mtime_ns: int, size: int, environment: JobEnvironment | None, runs: tuple[str, ...]
) -> ExperimentPlan:
    """Plan some runs of a file; cached while the file is unchanged, so the steps of one
    Dagster run (recipe_config, then run_config, ...) plan each experiment once."""
    experiment = load_experiment(file)
    absent = [r for r in runs if r not in {run.name for run in experiment.runs}]
    if absent:
        raise CkError(
            f"{file}: run(s) {', '.join(absent)} are registered but no longer in "
            "the file; put them back to rebuild them (their files are kept)"
        )
    return plan_experiment(experiment, environment, only=runs)


def load_registered_plans(
    instance: DagsterInstance,
    partition_keys: Iterable[str],
    environment: JobEnvironment | None = None,
) -> dict[str, RunPlan]:
    """Plan the given runs from the files they were registered from.

    Refuses (``CkError``) a run that is not registered, or whose spec in the file differs
    from the registered one: what Dagster records must be what gets built.
    """
    keys = list(partition_keys)
    registered = registered_runs(instance, keys)
    missing = [key for key in keys if key not in registered]
    if missing:
        raise CkError(
            "not registered: "
            + ", ".join(missing)
            + ". Register the experiment file first: ck-dagster register FILE"
        )
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(registered[key].experiment_file, []).append(key)
    plans: dict[str, RunPlan] = {}
    for file, file_keys in by_file.items():
        runs = tuple(sorted(split_key(key)[1] for key in file_keys))
        stat = file.stat()
        plan = _plan_file(file, stat.st_mtime_ns, stat.st_size, environment, runs)
        for key in file_keys:
            run_plan = plan.runs[split_key(key)[1]]
            if run_plan.spec_version != registered[key].spec_version:
                raise CkError(
                    f"{file}: run `{key}` changed since it was registered. Register the file "
                    f"again (ck-dagster register {file}, or let the experiments sensor do it) "
                    "so Dagster records what will be built"
                )
            plans[key] = run_plan
    return plans
