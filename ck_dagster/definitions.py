"""The one Definitions object: assets, checks, resources, sensors and schedules."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from ck_dagster.assets.automation import automation_sensor
from ck_dagster.assets.configs import (
    check_run_configs_job,
    config_validates,
    no_unknown_keys,
    recipe_config,
    run_config,
    run_spec,
)
from ck_dagster.assets.evaluation import (
    eval_log,
    eval_spec,
    every_sample_scored,
)
from ck_dagster.assets.launcher import LauncherResource
from ck_dagster.assets.reevaluation import ReevaluationResource, reevaluate_job, reevaluate_runs
from ck_dagster.assets.report import experiment_report, reports_sensor
from ck_dagster.assets.resources import ExperimentsFolderResource, JobEnvironmentResource
from ck_dagster.assets.sensors import experiments_sensor
from ck_dagster.assets.training import checkpoint

defs = Definitions(
    assets=[
        run_spec,
        recipe_config,
        run_config,
        checkpoint,
        eval_spec,
        eval_log,
        experiment_report,
    ],
    asset_checks=[config_validates, no_unknown_keys, every_sample_scored],
    jobs=[check_run_configs_job, reevaluate_job],
    schedules=[reevaluate_runs],
    sensors=[experiments_sensor, automation_sensor, reports_sensor],
    resources={
        "job_environment": JobEnvironmentResource(),
        "experiments_folder": ExperimentsFolderResource(),
        "launcher": LauncherResource(),
        "reevaluation": ReevaluationResource(),
    },
    # Steps run in one process: each step already handles a whole experiment (single-run
    # backfills) and its jobs run elsewhere, so a process per step would only add start-ups.
    executor=in_process_executor,
)
