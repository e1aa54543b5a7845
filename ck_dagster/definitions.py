"""The one Definitions object: assets, checks, resources, sensors and schedules.

Built from the deployment's settings (``ck_dagster.settings``) when this module is loaded: a
resource takes a variable that is set as Dagster's ``EnvVar`` (read by each run's process, and
shown as the variable in the UI), and the schedule's cron is the one the settings give.
"""

from __future__ import annotations

from dagster import Definitions, EnvVar, in_process_executor

from ck_dagster.assets.automation import automation_sensor
from ck_dagster.assets.configs import (
    check_run_configs_job,
    config_validates,
    no_unknown_keys,
    recipe_config,
    run_config,
    run_spec,
)
from ck_dagster.assets.evaluation import eval_log, eval_spec
from ck_dagster.assets.launcher import LauncherResource
from ck_dagster.assets.reevaluation import (
    ReevaluationResource,
    reevaluate_job,
    reevaluate_schedule,
)
from ck_dagster.assets.report import experiment_report, reports_sensor
from ck_dagster.assets.resources import ExperimentsFolderResource, JobEnvironmentResource
from ck_dagster.assets.sensors import experiments_sensor
from ck_dagster.assets.training import checkpoint
from ck_dagster.settings import Settings


def build_definitions(settings: Settings) -> Definitions:
    """Every definition, with the resources and the schedule ``settings`` configure."""

    def variable(name: str) -> EnvVar | None:
        return EnvVar(name) if name in settings.given else None

    return Definitions(
        assets=[
            run_spec,
            recipe_config,
            run_config,
            checkpoint,
            eval_spec,
            eval_log,
            experiment_report,
        ],
        asset_checks=[config_validates, no_unknown_keys],
        jobs=[check_run_configs_job, reevaluate_job],
        schedules=[reevaluate_schedule(settings.reevaluate_cron)],
        sensors=[experiments_sensor, automation_sensor, reports_sensor],
        resources={
            "job_environment": JobEnvironmentResource(
                modules=list(settings.job_modules),
                conda_env=variable("CK_JOB_CONDA_ENV"),
                venv=variable("CK_JOB_VENV"),
                cluster_profile=variable("CK_CLUSTER_PROFILE"),
            ),
            "experiments_folder": ExperimentsFolderResource(path=variable("CK_EXPERIMENTS_DIR")),
            "launcher": LauncherResource(
                kind=variable("CK_LAUNCHER"),
                local_jobs_dir=variable("CK_LOCAL_JOBS_DIR"),
                claim_settle_s=settings.claim_settle_s,
            ),
            "reevaluation": ReevaluationResource(force=settings.reevaluate_force),
        },
        # Steps run in one process: each step already handles a whole experiment (single-run
        # backfills) and its jobs run elsewhere, so a process per step would only add start-ups.
        executor=in_process_executor,
    )


defs = build_definitions(Settings.from_env())
