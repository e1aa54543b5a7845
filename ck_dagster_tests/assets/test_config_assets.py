"""The config assets on a real Dagster instance, driven by the real CLIs."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetCheckKey, AssetKey, DagsterInstance, build_sensor_context
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from ck_dagster.assets.resources import ExperimentsFolderResource, JobEnvironmentResource
from ck_dagster.assets.sensors import experiments_sensor
from ck_dagster.catalog.parameters import CK_RECIPE_KEYS, config_path
from ck_dagster.definitions import defs
from ck_dagster.experiment.load import load_experiment
from ck_dagster.finetune.catalog import recipe_catalog
from ck_dagster_tests.fixtures.dagster import run_command

# what the experiment implies, not the recipe/controls/run precedence rule itself
DERIVED = (
    "output_dir",
    "model._component_",
    "model.lora_alpha",
    "tokenizer.",
    "checkpointer.",
    "dataset.",
    "metric_logger.",
)  # metric_logger: output.wandb_project


def materialize(selection: str, keys: list[str]) -> str:
    result = run_command(
        [
            "dagster",
            "asset",
            "materialize",
            "-m",
            "ck_dagster",
            "--select",
            selection,
            "--partition-range",
            f"{keys[0]}...{keys[-1]}",
        ]
    )
    return result.stdout + result.stderr


def leaves(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(leaves(value, path + "."))
        else:
            out[path] = value
    return out


def expected_by_precedence(experiment, run) -> dict[str, Any]:
    """An independent oracle: recipe defaults, then controls, then run parameters."""
    controls = experiment.spec.controls
    name = controls.get("base_recipe")
    catalog = recipe_catalog()
    base = leaves(catalog.load(name) if name else catalog.builtin_defaults())
    expected = copy.deepcopy(base)
    for layer in (controls, run.parameters):
        for key, value in layer.items():
            if key in ("base_recipe", "custom_recipe"):
                continue
            expected[config_path(key)] = value
    return expected


@pytest.mark.parametrize("example", ["cap_rank_sweep.yaml", "model_comparison.yaml"])
def test_register_and_materialize_a_whole_experiment(
    dagster_home: Path, example_copy, example: str
) -> None:
    file = example_copy(example)
    out = run_command(["ck-dagster", "register", file]).stdout
    experiment = load_experiment(file)
    keys = [experiment.partition_key(run) for run in experiment.runs]
    assert f"{len(keys)} new" in out
    log = materialize("recipe_config,run_config", keys)
    assert "RUN_SUCCESS" in log

    validated: set[tuple[str, str]] = set()
    for run in experiment.runs:
        run_dir = experiment.run_dir(run)
        if run.is_control:
            assert not (run_dir / "finetune.yaml").exists()
            continue
        written = leaves(yaml.safe_load((run_dir / "finetune.yaml").read_text()))
        expected = expected_by_precedence(experiment, run)
        compared = 0
        for path, value in expected.items():
            if path.startswith(DERIVED) or path in ("device", "dtype", "optimizer.fused"):
                continue
            if path in CK_RECIPE_KEYS and value in (None, False, "all"):
                assert path not in written, f"{run.name}: {path} asks for nothing"
                continue
            assert written[path] == value, f"{run.name}: {path}"
            compared += 1
        assert compared > 20
        rank = written.get("model.lora_rank")
        assert written.get("model.lora_alpha") == run.parameters.get("lora_alpha", 2 * rank)
        assert written["output_dir"] == str(run_dir / "artifacts")
        # torchtune's own CLI agrees the config is valid: once per model and recipe (a
        # process of its own each; runs that differ only in values validate alike)
        text = (run_dir / "finetune.yaml").read_text()
        recipe = next(line for line in text.splitlines() if "tune run" in line)
        kind = (written["model._component_"], recipe)
        if kind not in validated:
            validated.add(kind)
            assert (
                "Config is well-formed!"
                in run_command(["tune", "validate", run_dir / "finetune.yaml"]).stdout
            )
        subprocess.run(["bash", "-n", str(run_dir / "finetune.slurm")], check=True)

    with DagsterInstance.get() as instance:
        for asset in ("recipe_config", "run_config"):
            assert instance.get_materialized_partitions(AssetKey(asset)) == set(keys)
        record = instance.fetch_materializations(AssetKey("run_config"), limit=1).records[0]
        metadata = record.asset_materialization.metadata
        assert {"values", "slurm_script", "finetune_yaml", "spec_version"} <= set(
            metadata
        ) or "note" in metadata
        for check in ("config_validates", "no_unknown_keys"):
            assert check_status(instance, check) == "SUCCEEDED"

    # a hand-edited config on disk is caught by the checks
    edited = experiment.run_dir(experiment.runs[0]) / "finetune.yaml"
    edited.write_text(edited.read_text().replace("lr: ", "lrr: ").replace("epochs:", "epoch:"))
    run_command(
        ["dagster", "job", "execute", "-m", "ck_dagster", "-j", "check_run_configs"], check=False
    )
    with DagsterInstance.get() as instance:
        assert check_status(instance, "config_validates") == "FAILED"
        assert check_status(instance, "no_unknown_keys") == "FAILED"


def check_status(instance: DagsterInstance, name: str) -> str:
    key = AssetCheckKey(AssetKey("run_config"), name)
    record = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)[0]
    return record.status.value


def test_rematerializing_is_byte_identical_and_edits_mark_runs_stale(
    dagster_home: Path, example_copy
) -> None:
    file = example_copy("cap_rank_sweep.yaml")
    run_command(["ck-dagster", "register", file])
    experiment = load_experiment(file)
    keys = [experiment.partition_key(run) for run in experiment.runs]
    materialize("recipe_config,run_config", keys)
    files = sorted(experiment.dir.rglob("finetune.*"))
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    artifact = experiment.run_dir("rank4") / "artifacts" / "epoch_0" / "model.safetensors"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"weights")

    materialize("recipe_config,run_config", keys)
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before
    assert artifact.read_bytes() == b"weights"
    assert stale(keys) == {}

    file.write_text(
        file.read_text()
        .replace("{lora_rank: 8}", "{lora_rank: 12}")
        .replace(
            "  - name: base\n",
            "  - name: rank32\n    type: fine-tuned\n"
            "    model: Llama-3.2-1B-Instruct\n    parameters: {lora_rank: 32}\n"
            "  - name: base\n",
        )
    )
    out = run_command(["ck-dagster", "register", file]).stdout
    assert "1 new, 1 changed, 4 unchanged" in out
    assert "changed (their configs are now stale): cap_rank_sweep/rank8" in out
    assert stale(keys) == {"cap_rank_sweep/rank8": {"recipe_config", "run_config"}}

    # materializing without re-registering an edit is refused with the fix
    file.write_text(file.read_text().replace("{lora_rank: 4}", "{lora_rank: 6}"))
    refused = run_command(
        [
            "dagster",
            "asset",
            "materialize",
            "-m",
            "ck_dagster",
            "--select",
            "run_config",
            "--partition",
            "cap_rank_sweep/rank4",
        ],
        check=False,
    )
    assert refused.returncode != 0
    assert "changed since it was registered" in refused.stdout + refused.stderr


def stale(keys: list[str]) -> dict[str, set[str]]:
    with DagsterInstance.get() as instance:
        resolver = CachingStaleStatusResolver(
            instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
        )
        found: dict[str, set[str]] = {}
        for key in keys:
            for asset in ("recipe_config", "run_config"):
                if resolver.get_status(AssetKey(asset), key) == StaleStatus.STALE:
                    found.setdefault(key, set()).add(asset)
        return found


def test_removed_runs_are_reported_not_deleted(dagster_home: Path, example_copy) -> None:
    file = example_copy("cap_rank_sweep.yaml")
    run_command(["ck-dagster", "register", file])
    text = file.read_text()
    start = text.index("  - name: rank16\n")
    file.write_text(text[:start] + text[text.index("  - name: rank16_lr3e-4") :])
    out = run_command(["ck-dagster", "register", file]).stdout
    assert "no longer in the file (kept, nothing deleted): cap_rank_sweep/rank16" in out
    with DagsterInstance.get() as instance:
        assert "cap_rank_sweep/rank16" in instance.get_dynamic_partitions("runs")


def test_another_file_cannot_take_over_an_experiment_name(
    dagster_home: Path, example_copy, tmp_path: Path
) -> None:
    file = example_copy("cap_rank_sweep.yaml")
    run_command(["ck-dagster", "register", file])
    twin = file.with_name("twin.yaml")
    twin.write_text(file.read_text())
    result = run_command(["ck-dagster", "register", twin], check=False)
    assert result.returncode == 2
    assert "already registered from" in result.stderr and "Traceback" not in result.stderr


def test_sensor_registers_new_and_changed_files(
    dagster_home: Path, example_copy, tmp_path: Path
) -> None:
    folder = example_copy("cap_rank_sweep.yaml").parent  # model_comparison.yaml is there too
    (folder / "broken.yaml").write_text("experiment: {name: broken}\n")
    resources = {
        "experiments_folder": ExperimentsFolderResource(path=str(folder)),
        "job_environment": JobEnvironmentResource(),
    }
    expected = {
        f"{e.name}/{r.name}"
        for f in ("cap_rank_sweep.yaml", "model_comparison.yaml")
        for e in [load_experiment(folder / f)]
        for r in e.runs
    }

    def tick(cursor: str | None):
        with build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
            return experiments_sensor(context)

    with DagsterInstance.get() as instance:
        result = tick(None)
        requested = {
            r.partitions_def_name: set(r.partition_keys) for r in result.dynamic_partitions_requests
        }
        assert requested == {
            "runs": expected,
            "experiments": {"cap_rank_sweep", "model_comparison"},
        }
        assert {e.partition for e in result.asset_events} == expected
        # nothing changed: the next tick does nothing (the broken file is not re-logged either)
        again = tick(result.cursor)
        assert again.dynamic_partitions_requests == [] and again.asset_events == []
        # an edited file is looked at again
        file = folder / "cap_rank_sweep.yaml"
        for name, partition_keys in requested.items():
            instance.add_dynamic_partitions(name, sorted(partition_keys))
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        file.write_text(file.read_text().replace("{lora_rank: 8}", "{lora_rank: 12}"))
        edited = tick(again.cursor)
        assert edited.dynamic_partitions_requests == []
        assert [e.partition for e in edited.asset_events] == ["cap_rank_sweep/rank8"]
