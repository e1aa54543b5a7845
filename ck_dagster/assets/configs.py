"""The config assets: ``run_spec`` (observed), ``recipe_config`` and ``run_config``.

Both computed assets are partitioned by run and use ``BackfillPolicy.single_run()``, so a whole
experiment materializes in one Dagster run (``--partition-range A...B``). Their store is the run
directory on disk; Dagster keeps metadata, lineage and versions.
"""

import hashlib
import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetSelection,
    AssetSpec,
    BackfillPolicy,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    asset_check,
    define_asset_job,
)

from ck_dagster.assets.partitions import runs_partitions
from ck_dagster.assets.registry import (
    RUN_SPEC,
    load_registered_plans,
    registered_keys,
    registered_runs,
)
from ck_dagster.assets.resources import JobEnvironmentResource
from ck_dagster.assets.versions import code_version
from ck_dagster.errors import CkError
from ck_dagster.fileio import atomic_write_text
from ck_dagster.finetune import config_checks
from ck_dagster.finetune.catalog import BUILTIN_DEFAULTS, recipe_catalog
from ck_dagster.finetune.plan import BUILTIN_RECIPE, RunPlan
from ck_dagster.slurm.script import check_script

run_spec = AssetSpec(
    key=RUN_SPEC,
    partitions_def=runs_partitions,
    group_name="experiment",
    description=(
        "A run as its experiment file describes it. Observed by `ck-dagster register` and the "
        "experiments sensor: its data version changes when the run's config, SLURM resources "
        "or training data change, which marks everything downstream stale."
    ),
    kinds={"yaml"},
)

PROVENANCE_SCHEMA = TableSchema(
    columns=[
        TableColumn("path", "string", description="torchtune config path"),
        TableColumn("value", "string"),
        TableColumn("source", "string", description="recipe, derived, controls or run"),
        TableColumn("origin", "string", description="the field or rule that set it"),
    ]
)


def plans_for(
    context: AssetExecutionContext | AssetCheckExecutionContext,
    job_environment: JobEnvironmentResource,
    keys: list[str] | None = None,
) -> dict[str, RunPlan]:
    """The plans of this step's partitions, as registered; user errors become a Failure."""
    try:
        return load_registered_plans(
            context.instance,
            keys if keys is not None else context.partition_keys,
            job_environment.environment(),
        )
    except CkError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None


@asset(
    partitions_def=runs_partitions,
    deps=[run_spec],
    backfill_policy=BackfillPolicy.single_run(),
    group_name="training",
    code_version=code_version("ck_dagster.finetune.catalog"),
    kinds={"torchtune"},
)
def recipe_config(
    context: AssetExecutionContext, job_environment: JobEnvironmentResource
) -> MaterializeResult:
    """The base recipe's config as the installed torchtune ships it (or the built-in
    defaults), read in-process from the files `tune ls` lists."""
    plans = plans_for(context, job_environment)
    by_recipe: dict[str | None, list[str]] = {}
    for key, plan in plans.items():
        by_recipe.setdefault("control" if plan.is_control else plan.base_recipe, []).append(key)
    # Partitions sharing a base recipe share one description (most experiments have one).
    described = {name: _recipe_metadata(name) for name in by_recipe}
    for name, keys in by_recipe.items():
        if len(by_recipe) == 1:
            context.add_asset_metadata(described[name])
        else:
            for key in keys:
                context.add_asset_metadata(described[name], partition_key=key)
    return MaterializeResult(
        data_version=_combined_version(
            described[name]["config_version"] for name in sorted(by_recipe, key=str)
        )
    )


def _recipe_metadata(name: str | None) -> dict[str, Any]:
    if name == "control":
        return {
            "run_type": "control",
            "config_version": "control",
            "note": MetadataValue.md(
                "Control run: evaluated on the base model, never trained, so no recipe."
            ),
        }
    catalog = recipe_catalog()
    config = catalog.load(name) if name else catalog.builtin_defaults()
    text = yaml.safe_dump(config, sort_keys=False)
    return {
        "base_recipe": name or "built-in defaults (no controls.base_recipe)",
        "recipe": catalog.get(name).recipe if name else BUILTIN_RECIPE,
        "torchtune_version": importlib.metadata.version("torchtune"),
        "file": MetadataValue.path(str(catalog.get(name).file if name else BUILTIN_DEFAULTS)),
        "config_version": hashlib.sha256(text.encode()).hexdigest()[:16],
        "config": MetadataValue.md(f"```yaml\n{text}```"),
    }


@asset(
    partitions_def=runs_partitions,
    deps=[recipe_config, run_spec],
    backfill_policy=BackfillPolicy.single_run(),
    group_name="training",
    code_version=code_version(
        "ck_dagster.finetune", "ck_dagster.slurm.script", "ck_dagster.slurm.resources"
    ),
    kinds={"torchtune", "slurm"},
)
def run_config(
    context: AssetExecutionContext, job_environment: JobEnvironmentResource
) -> MaterializeResult:
    """The run's merged torchtune config (`finetune.yaml`) and its SLURM script
    (`finetune.slurm`), every value traced to the recipe, the controls or the run."""
    plans = plans_for(context, job_environment)
    for key, plan in plans.items():
        context.add_asset_metadata(write_run_files(plan), partition_key=key)
    written = sum(1 for plan in plans.values() if not plan.is_control)
    context.log.info(f"{written} run config(s) in place, {len(plans) - written} control run(s)")
    return MaterializeResult(data_version=_combined_version(p.spec_version for p in plans.values()))


def write_run_files(plan: RunPlan) -> dict[str, Any]:
    """Write a run's finetune.yaml and finetune.slurm (atomically; unchanged files are left
    alone) and describe them as asset metadata."""
    common = {
        "run_type": plan.run.type,
        "model": plan.model.name,
        "spec_version": plan.spec_version,
        "run_dir": MetadataValue.path(str(plan.run_dir)),
    }
    if plan.is_control:
        return {
            **common,
            "note": MetadataValue.md(
                "Control run: evaluated on the base model, never trained, so it has no training "
                f"config. Base model: `{plan.model_path}`."
            ),
        }
    assert plan.finetune_yaml is not None and plan.slurm_script is not None
    yaml_path, slurm_path = plan.run_dir / "finetune.yaml", plan.run_dir / "finetune.slurm"
    script = check_script(plan.slurm_script)  # before either file is written
    changed = atomic_write_text(yaml_path, plan.finetune_yaml)
    changed |= atomic_write_text(slurm_path, script, mode=0o755)
    rows = [
        TableRecord(
            {"path": path, "value": _short(value), "source": source.kind, "origin": source.origin}
        )
        for path, value, source in plan.provenance()
    ]
    overridden = sum(1 for _, _, s in plan.provenance() if s.kind in ("controls", "run"))
    return {
        **common,
        "base_recipe": plan.base_recipe or "built-in defaults",
        "recipe": plan.recipe,
        "tune_command": " ".join(plan.job.command) if plan.job else "",
        "finetune_yaml": MetadataValue.path(str(yaml_path)),
        "finetune_slurm": MetadataValue.path(str(slurm_path)),
        "files_changed": changed,
        "values_from_experiment": overridden,
        "values": MetadataValue.table(rows, schema=PROVENANCE_SCHEMA),
        "slurm_script": MetadataValue.md(f"```bash\n{plan.slurm_script}```"),
        "resources": MetadataValue.json(vars(plan.resources)),
    }


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 200 else text[:197] + "..."


def _combined_version(versions: Any) -> DataVersion:
    digest = hashlib.sha256()
    for version in versions:
        digest.update(str(version).encode())
    return DataVersion(digest.hexdigest()[:16])


@asset_check(asset=run_config, name="config_validates", blocking=True)
def config_validates(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """Every registered run's finetune.yaml on disk passes torchtune's own validation."""
    return _check_configs(context, config_checks.validation_problems)


@asset_check(asset=run_config, name="no_unknown_keys")
def no_unknown_keys(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """No finetune.yaml on disk has a top-level key its recipe would silently ignore."""
    return _check_configs(context, config_checks.unknown_key_problems)


def _check_configs(
    context: AssetCheckExecutionContext, find_problems: Callable[[Path, str], list[str]]
) -> AssetCheckResult:
    runs = registered_runs(context.instance, registered_keys(context.instance))
    results = {
        key: find_problems(run.run_dir / "finetune.yaml", run.recipe)
        for key, run in sorted(runs.items())
        if run.recipe and (run.run_dir / "finetune.yaml").is_file()
    }
    failed = [key for key, problems in results.items() if problems]
    rows = [
        TableRecord({"run": key, "problems": "; ".join(problems) or "ok"})
        for key, problems in results.items()
    ]
    return AssetCheckResult(
        passed=not failed,
        description=(f"{len(failed)} of {len(results)} configs fail: " + ", ".join(failed))
        if failed
        else f"all {len(results)} configs pass",
        metadata={
            "runs_checked": len(results),
            "runs_failing": len(failed),
            "results": MetadataValue.table(
                rows,
                schema=TableSchema(
                    columns=[TableColumn("run", "string"), TableColumn("problems", "string")]
                ),
            ),
        },
    )


#: re-check every finetune.yaml on disk without rebuilding anything (e.g. after hand edits).
check_run_configs_job = define_asset_job(
    "check_run_configs",
    selection=AssetSelection.checks_for_assets(run_config),
    description="Run the run_config checks against the files on disk; rebuilds nothing.",
)
