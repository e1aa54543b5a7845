"""The one Definitions object: assets, checks, resources, sensors and schedules."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from ck_dagster.assets.configs import (
    config_validates,
    no_unknown_keys,
    recipe_config,
    run_config,
    run_spec,
)
from ck_dagster.assets.resources import JobEnvironmentResource

defs = Definitions(
    assets=[run_spec, recipe_config, run_config],
    asset_checks=[config_validates, no_unknown_keys],
    resources={"job_environment": JobEnvironmentResource()},
    # Steps run in one process: each step already handles a whole experiment (single-run
    # backfills), and one torchtune import per run beats one per step.
    executor=in_process_executor,
)
