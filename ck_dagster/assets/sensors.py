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
from ck_dagster.finetune.plan import file_digest

EXPERIMENT_FILE_PATTERNS = ("*.yaml", "*.yml")


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def experiments_sensor(
    context: SensorEvaluationContext,
    experiments_folder: ExperimentsFolderResource,
    job_environment: JobEnvironmentResource,
) -> SensorResult | SkipReason:
    """Register experiment files that appear or change under the experiments folder.

    A file is looked at again only when its content changes, or that of a file its evaluations
    read (task scripts and the modules they import, data, tokenizer); a refused file is logged
    with all its problems (and registers nothing) until it is fixed.
    """
    folder = experiments_folder.folder()
    if folder is None:
        return SkipReason(
            "no experiments folder: set CK_EXPERIMENTS_DIR (or configure the "
            "experiments_folder resource) to have experiment files registered"
        )
    if not folder.is_dir():
        return SkipReason(f"experiments folder {folder} does not exist")
    # file -> {"digest": ..., "inputs": [files its evaluations read]}: an edited task script,
    # helper module, data or tokenizer file changes an evaluation while the file stays the same.
    seen: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
    files = sorted({f for pattern in EXPERIMENT_FILE_PATTERNS for f in folder.rglob(pattern)})
    new_keys: list[str] = []
    new_experiments: list[str] = []
    observations = []
    names: dict[str, str] = {}
    for file in files:
        inputs = seen.get(str(file), {}).get("inputs", [])
        digest = _digest(file, inputs)
        if seen.get(str(file), {}).get("digest") == digest:
            continue
        seen[str(file)] = {"digest": digest, "inputs": inputs}
        try:
            registration = prepare_registration(
                context.instance, file, job_environment.environment()
            )
        except CkError as exc:
            context.log.error(f"not registered: {exc}")
            continue
        name = registration.plan.experiment.name
        if name in names:
            context.log.error(
                f"not registered: {file}: experiment `{name}` is also defined in "
                f"{names[name]}; give one of them another experiment.name"
            )
            continue
        names[name] = str(file)
        inputs = sorted(
            {str(path) for spec in registration.eval_specs.values() for path in spec.input_files()}
        )
        seen[str(file)] = {"digest": _digest(file, inputs), "inputs": inputs}
        context.log.info(registration.summary())
        new_keys += registration.new
        new_experiments += [name] if registration.new_experiment else []
        observations += registration.observations
    return SensorResult(
        dynamic_partitions_requests=[
            *([runs_partitions.build_add_request(new_keys)] if new_keys else []),
            *(
                [experiments_partitions.build_add_request(new_experiments)]
                if new_experiments
                else []
            ),
        ],
        asset_events=observations,
        cursor=json.dumps(seen, sort_keys=True),
    )


def _digest(file: Path, inputs: list[str]) -> str:
    """The content of an experiment file and of the files its evaluations read (each hashed
    again only when its size or mtime changed)."""
    parts = [sha256_file(file)]
    parts += [file_digest(Path(s)) if Path(s).is_file() else "missing" for s in inputs]
    return sha256_text("\n".join(parts))
