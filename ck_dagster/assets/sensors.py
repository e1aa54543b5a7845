"""The experiments sensor: experiment files dropped into (or edited in) a folder get registered."""

import json

from dagster import (
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ck_dagster.assets.partitions import runs_partitions
from ck_dagster.assets.registry import prepare_registration
from ck_dagster.assets.resources import ExperimentsFolderResource, JobEnvironmentResource
from ck_dagster.errors import CkError
from ck_dagster.fileio import sha256_file

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
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    files = sorted({f for pattern in EXPERIMENT_FILE_PATTERNS for f in folder.rglob(pattern)})
    new_keys: list[str] = []
    observations = []
    names: dict[str, str] = {}
    for file in files:
        digest = sha256_file(file)
        if seen.get(str(file)) == digest:
            continue
        seen[str(file)] = digest
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
        context.log.info(registration.summary())
        new_keys += registration.new
        observations += registration.observations
    return SensorResult(
        dynamic_partitions_requests=[runs_partitions.build_add_request(new_keys)] if new_keys
        else [],
        asset_events=observations,
        cursor=json.dumps(seen, sort_keys=True),
    )
