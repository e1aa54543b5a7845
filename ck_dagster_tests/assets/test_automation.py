"""Declarative automation, with Dagster's own evaluation API on a real instance."""

from __future__ import annotations

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    build_sensor_context,
    evaluate_automation_conditions,
)

from ck_dagster.assets.partitions import experiments_partitions
from ck_dagster.assets.registry import apply_registration, prepare_registration
from ck_dagster.assets.report import reports_sensor
from ck_dagster.definitions import defs
from ck_dagster.slurm.script import JobEnvironment
from ck_dagster_tests.fixtures.experiments import write_tiny_experiment

EVAL, REPORT, CHECKPOINT = (
    AssetKey("eval_log"),
    AssetKey("experiment_report"),
    AssetKey("checkpoint"),
)


def register(instance: DagsterInstance, file) -> list[str]:
    registration = prepare_registration(instance, file, JobEnvironment())
    apply_registration(instance, registration)
    return registration.new


def materialized(instance: DagsterInstance, key: AssetKey, partition: str | None = None) -> None:
    """Record a materialization as a finished run would (what automation reacts to)."""
    instance.report_runless_asset_event(AssetMaterialization(key, partition=partition))


def test_evals_follow_checkpoints_and_the_report_follows_evals(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data
) -> None:
    file = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data)
    with DagsterInstance.get() as instance:
        register(instance, file)
        first = evaluate_automation_conditions(defs, instance)
        # nothing is trained yet: no evaluation can run
        assert first.get_requested_partitions(EVAL) == set()

        materialized(instance, CHECKPOINT, "tiny/lora8")
        second = evaluate_automation_conditions(defs, instance, cursor=first.cursor)
        assert second.get_requested_partitions(EVAL) == {"tiny/lora8"}

        # the requested runs happen; then a quiet tick requests nothing
        quiet = evaluate_automation_conditions(defs, instance, cursor=second.cursor)
        assert quiet.get_requested_partitions(EVAL) == set()

        materialized(instance, EVAL, "tiny/lora8")
        third = evaluate_automation_conditions(defs, instance, cursor=quiet.cursor)
        assert third.get_requested_partitions(EVAL) == set()
        assert third.get_num_requested(REPORT) == 0  # the reports sensor requests reports

        # a retrained checkpoint is evaluated again
        materialized(instance, CHECKPOINT, "tiny/lora8")
        fourth = evaluate_automation_conditions(defs, instance, cursor=third.cursor)
        assert fourth.get_requested_partitions(EVAL) == {"tiny/lora8"}


def report_requests(instance: DagsterInstance, cursor: str | None) -> tuple[list[str], str]:
    """The experiments whose reports the sensor requests on one tick, and its new cursor."""
    with build_sensor_context(instance=instance, cursor=cursor) as context:
        result = reports_sensor(context)
    return sorted(r.partition_key for r in result.run_requests), result.cursor or cursor


def test_reports_follow_only_the_experiments_whose_evaluations_changed(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data
) -> None:
    first = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data)
    second = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data, name="other")
    with DagsterInstance.get() as instance:
        register(instance, first)
        register(instance, second)
        assert instance.get_dynamic_partitions(experiments_partitions.name) == ["tiny", "other"]
        assert report_requests(instance, None) == ([], None)

        materialized(instance, EVAL, "tiny/lora8")
        materialized(instance, EVAL, "tiny/base")
        requested, cursor = report_requests(instance, None)
        assert requested == ["tiny"]
        assert report_requests(instance, cursor)[0] == []  # nothing new: nothing requested

        materialized(instance, CHECKPOINT, "other/lora8")  # training alone changes no report
        materialized(instance, EVAL, "other/base")
        assert report_requests(instance, cursor)[0] == ["other"]


def test_changing_the_evaluation_touches_evaluations_only(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data
) -> None:
    file = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data)
    with DagsterInstance.get() as instance:
        register(instance, file)
        file.write_text(file.read_text().replace("max_tokens: 12", "max_tokens: 16"))
        registration = prepare_registration(instance, file, JobEnvironment())
    assert sorted(registration.eval_changed) == ["tiny/base", "tiny/lora16", "tiny/lora8"]
    assert registration.changed == []  # training is untouched
    assert [o.asset_key.path[0] for o in registration.observations] == ["eval_spec"] * 3


def test_a_registered_evaluation_change_is_evaluated_for_the_affected_runs_only(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data
) -> None:
    file = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data)
    with DagsterInstance.get() as instance:
        keys = register(instance, file)
        for key in keys:
            materialized(instance, CHECKPOINT, key)
            materialized(instance, EVAL, key)
        materialized(instance, REPORT, "tiny")
        first = evaluate_automation_conditions(defs, instance)
        quiet = evaluate_automation_conditions(defs, instance, cursor=first.cursor)
        assert quiet.get_requested_partitions(EVAL) == set()
        file.write_text(file.read_text() + "  matrix: [{run: lora16, epochs: [0]}]\n")
        register(instance, file)
        edited = evaluate_automation_conditions(defs, instance, cursor=quiet.cursor)
        assert edited.get_requested_partitions(EVAL) == {"tiny/lora16"}
        after = evaluate_automation_conditions(defs, instance, cursor=edited.cursor)
        assert after.get_requested_partitions(EVAL) == set()
