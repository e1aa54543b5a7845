"""The experiments sensor: experiment files dropped into (or edited in) a folder get registered."""

import json
from pathlib import Path

from dagster import (
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ck_dagster.assets.partitions import experiments_partitions, runs_partitions
from ck_dagster.assets.registry import prepare_registration
from ck_dagster.assets.resources import ExperimentsFolderResource, JobEnvironmentResource
from ck_dagster.errors import CkError
from ck_dagster.fileio import sha256_file, sha256_text

EXPERIMENT_FILE_PATTERNS = ("*.yaml", "*.yml")


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def experiments_sensor(context: SensorEvaluationContext,
                       experiments_folder: ExperimentsFolderResource,
                       job_environment: JobEnvironmentResource) -> SensorResult | SkipReason:
    """Register experiment files that appear or change under the experiments folder.

    A file is looked at again only when its content changes; a refused file is logged with
    all its problems (and registers nothing) until it is fixed.
    """
    folder = experiments_folder.folder()
    if folder is None:
        return SkipReason("no experiments folder: set CK_EXPERIMENTS_DIR (or configure the "
                          "experiments_folder resource) to have experiment files registered")
    if not folder.is_dir():
        return SkipReason(f"experiments folder {folder} does not exist")
    # file -> {"digest": ..., "scripts": [task scripts it names]}: an edited task script
    # changes the evaluation even when the experiment file stays the same.
    seen: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
    files = sorted({f for pattern in EXPERIMENT_FILE_PATTERNS for f in folder.rglob(pattern)})
    new_keys: list[str] = []
    new_experiments: list[str] = []
    observations = []
    names: dict[str, str] = {}
    for file in files:
        scripts = seen.get(str(file), {}).get("scripts", [])
        digest = _digest(file, scripts)
        if seen.get(str(file), {}).get("digest") == digest:
            continue
        seen[str(file)] = {"digest": digest, "scripts": scripts}
        try:
            registration = prepare_registration(context.instance, file,
                                                job_environment.environment())
        except CkError as exc:
            context.log.error(f"not registered: {exc}")
            continue
        name = registration.plan.experiment.name
        if name in names:
            context.log.error(f"not registered: {file}: experiment `{name}` is also defined in "
                              f"{names[name]}; give one of them another experiment.name")
            continue
        names[name] = str(file)
        scripts = sorted({t.script for spec in registration.eval_specs.values()
                          for t in spec.tasks if t.script})
        seen[str(file)] = {"digest": _digest(file, scripts), "scripts": scripts}
        context.log.info(registration.summary())
        new_keys += registration.new
        new_experiments += [name] if registration.new_experiment else []
        observations += registration.observations
    return SensorResult(
        dynamic_partitions_requests=[
            *([runs_partitions.build_add_request(new_keys)] if new_keys else []),
            *([experiments_partitions.build_add_request(new_experiments)]
              if new_experiments else [])],
        asset_events=observations,
        cursor=json.dumps(seen, sort_keys=True),
    )


def _digest(file: Path, scripts: list[str]) -> str:
    """The content of an experiment file and of the task scripts it names."""
    parts = [sha256_file(file)]
    parts += [sha256_file(Path(s)) if Path(s).is_file() else "missing" for s in scripts]
    return sha256_text("\n".join(parts))
