"""The ``reevaluate_runs`` schedule and the sensor/automation path of an evaluation change,
with Dagster's own testing APIs (``build_schedule_context``, ``build_sensor_context``,
``evaluate_automation_conditions``) on a real instance.

Runs are left trained and evaluated as their jobs leave them: checkpoint recorded, epoch
folders, ``eval_spec.json`` and a ``results.json`` of every pair; the end-to-end test in
``test_evaluation_e2e.py`` makes them with real jobs.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    evaluate_automation_conditions,
)

from ck_dagster.assets.reevaluation import (
    ReevaluationResource,
    contiguous_blocks,
    reevaluate_schedule,
)
from ck_dagster.assets.registry import apply_registration, prepare_registration
from ck_dagster.assets.resources import ExperimentsFolderResource, JobEnvironmentResource
from ck_dagster.assets.sensors import experiments_sensor
from ck_dagster.definitions import build_definitions, defs
from ck_dagster.evaluation.spec import EvalSpec
from ck_dagster.settings import DEFAULT_REEVALUATE_CRON, Settings
from ck_dagster.slurm.script import JobEnvironment
from ck_dagster_tests.assets.test_automation import CHECKPOINT, EVAL, materialized
from ck_dagster_tests.evaluation.test_results import finished
from ck_dagster_tests.fixtures.experiments import write_tiny_experiment

TICK = dt.datetime(2026, 11, 23, 6, 0, tzinfo=dt.timezone.utc)
ALL = ("tiny/lora8", "tiny/base")  # the tiny experiment's runs: lora8, lora16, base


def register(instance: DagsterInstance, file: Path) -> dict[str, EvalSpec]:
    registration = prepare_registration(instance, file, JobEnvironment())
    apply_registration(instance, registration)
    return registration.eval_specs


def evaluate(
    instance: DagsterInstance,
    specs: dict[str, EvalSpec],
    trained: tuple[str, ...] = ("tiny/lora8", "tiny/lora16", "tiny/base"),
) -> None:
    """Leave runs trained and evaluated with ``specs`` as their jobs would."""
    for key in trained:
        spec = specs[key]
        for target in spec.targets:  # the folder training wrote, never the base model's
            if not Path(target.checkpoint).is_dir():
                Path(target.checkpoint).mkdir(parents=True)
                (Path(target.checkpoint) / "model.safetensors").write_bytes(b"w" * 10)
        spec.write()
        finished(spec).write(Path(spec.run_dir))
        materialized(instance, CHECKPOINT, key)


def tick(
    instance: DagsterInstance, reevaluation: ReevaluationResource | None = None, **settings: bool
) -> list[RunRequest | SkipReason]:
    """One tick of the schedule, with ``reevaluation`` or a resource of ``settings``."""
    with build_schedule_context(
        instance=instance,
        scheduled_execution_time=TICK,
        resources={"reevaluation": reevaluation or ReevaluationResource(**settings)},
    ) as context:
        return list(reevaluate_schedule(DEFAULT_REEVALUATE_CRON)(context))


def ranges(result: list[RunRequest | SkipReason], force: bool = False) -> list[tuple[str, str]]:
    """The partition range of every request (each must carry ``force``)."""
    assert all(isinstance(r, RunRequest) for r in result), result
    for request in result:
        assert request.run_config["ops"]["eval_log"]["config"]["force"] is force
    return [(r.partition_key_range.start, r.partition_key_range.end) for r in result]


def skipped(result: list[RunRequest | SkipReason]) -> str:
    assert len(result) == 1 and isinstance(result[0], SkipReason), result
    return result[0].skip_message or ""


def test_a_tick_requests_nothing_when_nothing_changed_and_what_is_missing_retrained_or_failed(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data
) -> None:
    file = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data)
    with DagsterInstance.get() as instance:
        specs = register(instance, file)
        assert "no registered run with an evaluation has a checkpoint" in skipped(tick(instance))
        evaluate(instance, specs)
        assert (
            "nothing to re-evaluate: the evaluations of all 3 trained runs are current"
            in skipped(tick(instance))
        )
        # a retrained checkpoint
        weights = Path(specs["tiny/lora16"].targets[1].checkpoint) / "model.safetensors"
        assert tiny_model_dir not in weights.parents  # the shared base model stays untouched
        weights.write_bytes(b"retrained")
        assert ranges(tick(instance)) == [("tiny/lora16", "tiny/lora16")]
        # and a run trained but never evaluated
        (Path(specs["tiny/base"].run_dir) / "eval" / "results.json").unlink()
        requests = tick(instance)
        assert ranges(requests) == [("tiny/lora16", "tiny/base")]
        assert requests[0].run_key == "tiny/lora16...tiny/base@20261123T0600"
        # and an evaluation that failed
        finished(specs["tiny/lora8"], errors=1, error="boom").write(
            Path(specs["tiny/lora8"].run_dir)
        )
        assert ranges(tick(instance)) == [("tiny/lora8", "tiny/base")]


def test_an_evaluation_edit_requests_exactly_the_affected_runs(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data
) -> None:
    file = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data)
    original = file.read_text()
    with DagsterInstance.get() as instance:
        evaluate(instance, register(instance, file))
        file.write_text(original + "  matrix: [{run: lora16, epochs: [0]}]\n")
        register(instance, file)
        assert ranges(tick(instance)) == [("tiny/lora16", "tiny/lora16")]
        # a second task for every run but lora16: two runs that are not neighbours
        file.write_text(
            original.replace("[{name: capitalization}]", "[{name: capitalization}, {name: second}]")
            + "  matrix: [{run: lora16, tasks: [capitalization]}]\n"
        )
        register(instance, file)
        assert ranges(tick(instance)) == [("tiny/lora8", "tiny/lora8"), ("tiny/base", "tiny/base")]


HELPER = "LETTERS = 'abc'\n"
TASK = """from inspect_ai import Task, task
from inspect_ai.dataset import Sample

from words.helper import LETTERS


@task
def words() -> Task:
    return Task(dataset=[Sample(input=letter, target=letter.upper()) for letter in LETTERS])
"""


def test_a_helper_module_edit_is_picked_up_by_the_sensor_and_evaluated_by_automation_and_schedule(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data
) -> None:
    folder = tmp_path / "experiments"
    (folder / "words").mkdir(parents=True)
    (folder / "words" / "__init__.py").write_text("")
    (folder / "words" / "helper.py").write_text(HELPER)
    (folder / "task.py").write_text(TASK)
    file = write_tiny_experiment(folder, tiny_model_dir, capitalization_data)
    file.write_text(
        file.read_text().replace("[{name: capitalization}]", "[{name: words, script: task.py}]")
    )
    resources = {
        "experiments_folder": ExperimentsFolderResource(path=str(folder)),
        "job_environment": JobEnvironmentResource(),
    }

    def sense(cursor: str | None) -> str | None:
        with build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
            result = experiments_sensor(context)
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions("runs", list(request.partition_keys))
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        return result.cursor

    with DagsterInstance.get() as instance:
        cursor = sense(None)
        evaluate(instance, register(instance, file))  # as registered: nothing changes
        assert "nothing to re-evaluate" in skipped(tick(instance))
        first = evaluate_automation_conditions(defs, instance)

        (folder / "words" / "helper.py").write_text("LETTERS = 'abcd'\n")
        # until it is registered, a tick says so and does nothing
        assert (
            "the evaluation inputs of tiny/lora8, tiny/lora16, tiny/base changed since "
            "they were registered" in skipped(tick(instance))
        )
        cursor = sense(cursor)
        assert ranges(tick(instance)) == [ALL]
        picked_up = evaluate_automation_conditions(defs, instance, cursor=first.cursor)
        assert picked_up.get_requested_partitions(EVAL) == {
            "tiny/lora8",
            "tiny/lora16",
            "tiny/base",
        }
        assert sense(cursor) == cursor  # nothing more to pick up


def test_data_and_tokenizer_edits_request_every_run_they_feed(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data
) -> None:
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    data = Path(shutil.copy(capitalization_data, tmp_path / "data.json"))
    file = write_tiny_experiment(tmp_path, model, data)
    with DagsterInstance.get() as instance:
        evaluate(instance, register(instance, file))
        data.write_text(data.read_text().replace('"output": "', '"output": " ', 1))
        specs = register(instance, file)
        assert ranges(tick(instance)) == [ALL]
        evaluate(instance, specs)
        assert "nothing to re-evaluate" in skipped(tick(instance))
        with (model / "original" / "tokenizer.model").open("a") as tokenizer:
            tokenizer.write("\n")
        register(instance, file)
        assert ranges(tick(instance)) == [ALL]


def test_a_forced_tick_covers_every_trained_run(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data, monkeypatch
) -> None:
    file = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data)
    # trained too, but with no evaluation: never requested
    (tmp_path / "other").mkdir()
    other = write_tiny_experiment(
        tmp_path / "other", tiny_model_dir, capitalization_data, name="other"
    )
    other.write_text(other.read_text().split("evaluation:")[0])
    with DagsterInstance.get() as instance:
        evaluate(instance, register(instance, file), trained=("tiny/lora8", "tiny/lora16"))
        assert register(instance, other) == {}
        materialized(instance, CHECKPOINT, "other/lora8")
        assert "nothing to re-evaluate" in skipped(tick(instance))
        assert ranges(tick(instance, force=True), force=True) == [("tiny/lora8", "tiny/lora16")]
        monkeypatch.setenv("CK_REEVALUATE_FORCE", "1")  # the deployment's definitions force it
        forced = build_definitions(Settings.from_env()).resources["reevaluation"]
        assert ranges(tick(instance, forced), force=True) == [("tiny/lora8", "tiny/lora16")]
        assert "nothing to re-evaluate" in skipped(tick(instance, force=False))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("keys", "wanted", "blocks"),
    [
        (["a/1", "a/2", "a/3"], {"a/1", "a/2", "a/3"}, [["a/1", "a/2", "a/3"]]),
        (["a/1", "a/2", "a/3"], {"a/1", "a/3"}, [["a/1"], ["a/3"]]),
        (
            ["a/1", "b/1", "a/2", "a/3"],
            {"a/1", "b/1", "a/2", "a/3"},
            [["a/1"], ["b/1"], ["a/2", "a/3"]],
        ),
    ],
)
def test_a_range_never_spans_a_run_it_does_not_need(keys, wanted, blocks) -> None:
    assert contiguous_blocks(keys, wanted) == blocks
