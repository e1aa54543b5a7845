"""A scheduled re-evaluation through SLURM after an evaluation edit, and the report following.

A control run (nothing to train) on 10 test rows keeps it to two short evaluation jobs of the
tiny base model; the Dagster runs execute in this process (as the CLI or a run launcher would)
and it registers as ``ck-dagster register`` does.
"""

from __future__ import annotations

import csv
import json

import pytest
from dagster import AssetKey, DagsterInstance, RunRequest, SkipReason, build_schedule_context

from ck_dagster.assets.reevaluation import ReevaluationResource
from ck_dagster.assets.registry import EVAL_SPEC, registered_versions
from ck_dagster.definitions import defs
from ck_dagster.experiment.load import load_experiment
from ck_dagster_tests.assets.test_evaluation_e2e import metadata
from ck_dagster_tests.assets.test_reevaluation import TICK, register
from ck_dagster_tests.fixtures.experiments import write_tiny_experiment

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
CONTROL = "\n  - {name: base, type: control, model: tiny-llama}\n"


def tick(instance: DagsterInstance) -> list[RunRequest | SkipReason]:
    with build_schedule_context(
        instance=instance,
        scheduled_execution_time=TICK,
        resources={"reevaluation": ReevaluationResource()},
    ) as context:
        return list(defs.resolve_schedule_def("reevaluate_runs")(context))


def execute(instance: DagsterInstance, assets: str, **kwargs) -> str:
    """Materialize ``assets`` (comma-separated) in a run of this process; its log messages."""
    job = defs.resolve_implicit_global_asset_job_def()
    return run_log(
        instance,
        job.execute_in_process(
            instance=instance,
            asset_selection=[AssetKey(name) for name in assets.split(",")],
            **kwargs,
        ),
    )


def run_log(instance: DagsterInstance, result) -> str:
    assert result.success
    return "\n".join(str(entry.user_message) for entry in instance.all_logs(result.run_id))


def report_metrics(experiment_dir) -> set[str]:
    return {
        row["metric"] for row in csv.DictReader((experiment_dir / "report" / "report.csv").open())
    }


def test_a_scheduled_tick_reevaluates_an_edited_evaluation_and_the_report_follows(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data, slurm_cluster, monkeypatch
) -> None:
    monkeypatch.setenv("CK_LAUNCHER", "slurm")
    data = json.loads(capitalization_data.read_text())
    (tmp_path / "data.json").write_text(json.dumps({**data, "test": data["test"][:10]}))
    file = write_tiny_experiment(tmp_path, tiny_model_dir, tmp_path / "data.json", runs=CONTROL)
    experiment_dir = load_experiment(file).dir
    with DagsterInstance.get() as instance:
        register(instance, file)
        assert "tiny/base: submitted job" in execute(
            instance, "checkpoint,eval_log", partition_key="tiny/base"
        )
        execute(instance, "experiment_report", partition_key="tiny")
        assert report_metrics(experiment_dir) == {"match", "includes"}
        assert "nothing to re-evaluate" in tick(instance)[0].skip_message

        file.write_text(file.read_text() + "  scorers: [includes]\n")
        register(instance, file)
        [request] = tick(instance)
        assert request.tags == {
            "dagster/asset_partition_range_start": "tiny/base",
            "dagster/asset_partition_range_end": "tiny/base",
        }
        job = defs.resolve_job_def(request.job_name or "reevaluate_runs_job")
        log = run_log(
            instance,
            job.execute_in_process(
                instance=instance, tags=request.tags, run_config=request.run_config
            ),
        )
        assert "tiny/base: submitted job" in log
        assert (
            metadata(instance, "eval_log", "tiny/base")["spec_version"]
            == registered_versions(instance, EVAL_SPEC, ["tiny/base"])["tiny/base"]
        )
        assert "nothing to re-evaluate" in tick(instance)[0].skip_message

        execute(instance, "experiment_report", partition_key="tiny")
    assert report_metrics(experiment_dir) == {"includes"}
