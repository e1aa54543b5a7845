"""The tiny experiment end to end through SLURM: train, evaluate, report, stale evals."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter, DagsterInstance
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from inspect_ai.log import read_eval_log

from ck_dagster.definitions import defs
from ck_dagster.experiment.load import load_experiment
from ck_dagster_tests.evaluation.tiny_experiment import EPOCHS, write_experiment
from ck_dagster_tests.fixtures.dagster import run_command

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def materialize(*args: str) -> str:
    result = run_command(
        ["dagster", "asset", "materialize", "-m", "ck_dagster", *args],
        timeout=900,
        env={"CK_LAUNCHER": "slurm"},
    )
    return result.stdout + result.stderr


def metadata(instance: DagsterInstance, asset: str, partition: str | None) -> dict:
    records = instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=AssetKey(asset), asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def test_train_evaluate_report_and_stale_evaluations(
    dagster_home, tmp_path, tiny_model_dir, capitalization_data, slurm_cluster
) -> None:
    file = write_experiment(tmp_path, tiny_model_dir, capitalization_data)
    run_command(["ck-dagster", "register", file])
    experiment = load_experiment(file)
    keys = [experiment.partition_key(run) for run in experiment.runs]
    log = materialize(
        "--select",
        "recipe_config,run_config,checkpoint,eval_log",
        "--partition-range",
        f"{keys[0]}...{keys[-1]}",
    )
    assert "tiny_eval/tuned: submitted job" in log and "eval tiny_eval/tuned" in log
    materialize("--select", "experiment_report", "--partition", "tiny_eval")

    last = f"epoch_{EPOCHS - 1}"
    with DagsterInstance.get() as instance:
        tuned = metadata(instance, "eval_log", "tiny_eval/tuned")
        base = metadata(instance, "eval_log", "tiny_eval/base")
        # fine-tuning taught the tiny model to capitalize; its base model cannot
        assert tuned[f"capitalization/{last}/accuracy"] > base["capitalization/base/accuracy"]
        assert base["errored_samples"] == tuned["errored_samples"] == 0
        assert tuned["samples"] == 2 * base["samples"] > 0  # two epochs evaluated
        check = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey("eval_log"), "every_sample_scored"), limit=1
        )[0]
        assert check.status.value == "SUCCEEDED"
        report = metadata(instance, "experiment_report", "tiny_eval")
    # one row per run, the best epoch, and the tuned run tested against the control on the
    # same samples (it learnt to capitalize, the base model did not: a significant difference)
    assert "| base (control) |  |  | base model: 0.000 |" in report["report"]
    [paired] = [
        line
        for line in report["report"].splitlines()
        if line.startswith("| tuned epoch_") and "control: base" in line
    ]
    cells = [cell.strip() for cell in paired.strip("|").split("|")]
    assert float(cells[2]) > 0 and int(cells[3]) > int(cells[4]) and float(cells[5]) < 0.05
    assert "data:image/png;base64," in report["report"]

    for label in ("epoch_0", last):
        [eval_file] = (
            experiment.run_dir("tuned") / "eval" / "capitalization" / label / "logs"
        ).glob("*.eval")
        assert read_eval_log(str(eval_file)).status == "success"
    rows = list(csv.DictReader((experiment.dir / "report" / "report.csv").open()))
    assert {(r["run"], r["epoch"]) for r in rows} == {
        ("tuned", "epoch_0"),
        ("tuned", last),
        ("base", "base"),
    }
    assert (experiment.dir / "report" / "scores.png").read_bytes()[:4] == b"\x89PNG"
    [versus] = list(csv.DictReader((experiment.dir / "report" / "comparisons.csv").open()))
    assert (versus["run"], versus["vs"], versus["other"]) == ("tuned", "control", "base")

    # a changed evaluation setting marks the evaluations stale, and nothing upstream
    file.write_text(file.read_text().replace("max_tokens: 12", "max_tokens: 10"))
    assert "evaluation changed" in run_command(["ck-dagster", "register", file]).stdout
    with DagsterInstance.get() as instance:
        resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
        )
        for key in keys:
            assert resolver.get_status(AssetKey("eval_log"), key) == StaleStatus.STALE
            for upstream in ("run_config", "checkpoint"):
                assert resolver.get_status(AssetKey(upstream), key) == StaleStatus.FRESH

    # evaluating again adopts nothing stale: new logs, earlier ones kept
    materialize("--select", "eval_log", "--partition", "tiny_eval/base")
    assert list(Path(experiment.run_dir("base"), "eval.previous").rglob("*.eval"))
