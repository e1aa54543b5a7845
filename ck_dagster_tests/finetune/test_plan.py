"""Merging recipe -> controls -> run, with provenance, model registry and SLURM resources."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ck_dagster.experiment.load import load_experiment
from ck_dagster.experiment.problems import ExperimentFileError
from ck_dagster.finetune.catalog import recipe_catalog
from ck_dagster.finetune.merge import ProvenancedConfig, Source
from ck_dagster.finetune.plan import plan_experiment, plan_experiment_file
from ck_dagster.slurm.script import JobEnvironment
from ck_dagster_tests.fixtures.dagster import EXAMPLES

NO_ENV = JobEnvironment()


def plan(name: str = "cap_rank_sweep.yaml", text: str | None = None, tmp: Path | None = None):
    file = EXAMPLES / name
    if text is not None:
        assert tmp is not None
        file = tmp / name
        file.write_text(text.replace("path: data/", f"path: {EXAMPLES}/data/"))
    return plan_experiment(load_experiment(file), NO_ENV)


@pytest.mark.unit
def test_scalars_replace_mappings_merge_and_sources_are_kept() -> None:
    config = ProvenancedConfig()
    recipe, run = Source("recipe", "r"), Source("run", "x")
    config.merge({"optimizer": {"_component_": "AdamW", "lr": 1.0}, "modules": ["q", "v"]}, recipe)
    config.merge({"optimizer": {"lr": 2.0}, "modules": ["k"], "a.b": 3}, run)
    assert config.config == {
        "optimizer": {"_component_": "AdamW", "lr": 2.0},
        "modules": ["k"],
        "a": {"b": 3},
    }
    assert config.sources == {
        "optimizer._component_": recipe,
        "optimizer.lr": run,
        "modules": run,
        "a.b": run,
    }
    config.set("optimizer", 5, run)
    assert "optimizer.lr" not in config.sources and config.sources["optimizer"] == run


@pytest.mark.unit
def test_run_overrides_controls_override_recipe() -> None:
    run = plan().runs["rank16_lr3e-4"]
    assert run.config is not None
    values = {path: (value, source.kind) for path, value, source in run.provenance()}
    recipe = recipe_catalog().load("llama3_2/1B_lora_single_device")
    assert values["model.lora_rank"] == (16, "run")
    assert values["model.lora_alpha"] == (32, "derived")
    assert values["optimizer.lr"] == (3e-4, "run")
    assert values["optimizer.weight_decay"] == (0.02, "controls")
    assert values["epochs"] == (2, "controls")
    assert values["gradient_accumulation_steps"] == (
        recipe["gradient_accumulation_steps"],
        "recipe",
    )
    assert values["lr_scheduler._component_"] == (recipe["lr_scheduler"]["_component_"], "recipe")
    assert values["dataset.prompt"] == ("Capitalize the given word: {input}\n", "controls")
    assert values["output_dir"][0].endswith("cap_rank_sweep/rank16_lr3e-4/artifacts")
    assert values["checkpointer.checkpoint_dir"] == (
        "/scratch/models/Llama-3.2-1B-Instruct",
        "derived",
    )


@pytest.mark.unit
def test_builtin_defaults_without_base_recipe() -> None:
    runs = plan("model_comparison.yaml").runs
    config = runs["llama_lr1e-4"].config
    assert config is not None
    sources = dict((p, s) for p, _, s in config.leaves())
    assert (
        config.get("optimizer.lr") == 1e-4 and sources["optimizer.lr"].origin == "built-in defaults"
    )
    for path, value in [
        ("lr_scheduler.num_warmup_steps", 100),
        ("optimizer.weight_decay", 0.01),
        ("tokenizer.max_seq_len", 2048),
        ("seed", 14),
        ("log_every_n_steps", 5),
        ("batch_size", 4),
    ]:
        assert config.get(path) == value, path
    assert config.get("model.lora_rank") == 16 and config.get("model.lora_alpha") == 32
    assert runs["llama_lr5e-4"].config.get("optimizer.lr") == 5e-4


@pytest.mark.unit
def test_model_switch_and_distributed_twin() -> None:
    run = plan("model_comparison.yaml").runs["qwen_lr5e-4_2gpu"]
    assert run.recipe == "lora_finetune_distributed" and run.nproc == 2
    assert run.config.get("model._component_") == "torchtune.models.qwen2_5.lora_qwen2_5_0_5b"
    assert run.config.get("tokenizer") == {
        "_component_": "torchtune.models.qwen2_5.qwen2_5_tokenizer",
        "path": "/scratch/models/Qwen2.5-0.5B-Instruct/vocab.json",
        "merges_file": "/scratch/models/Qwen2.5-0.5B-Instruct/merges.txt",
        "max_seq_len": 2048,
    }
    assert "--nproc_per_node 2 lora_finetune_distributed" in run.slurm_script


@pytest.mark.unit
def test_explicit_lora_alpha_is_kept(tmp_path: Path) -> None:
    text = (
        (EXAMPLES / "cap_rank_sweep.yaml")
        .read_text()
        .replace("{lora_rank: 8}", "{lora_rank: 8, lora_alpha: 4}")
    )
    config = plan(text=text, tmp=tmp_path).runs["rank8"].config
    assert (config.get("model.lora_rank"), config.get("model.lora_alpha")) == (8, 4)


@pytest.mark.unit
@pytest.mark.parametrize(
    "model,compute,expected",
    [
        (
            "Llama-3.2-1B-Instruct",
            "{}",
            {"mem": "40G", "cpus": 4, "gpus": 1, "partition": "nomig", "constraint": None},
        ),
        ("Llama-3.2-1B-Instruct", "{mig: true}", {"mem": "16G", "partition": None}),
        ("Llama-3.2-3B-Instruct", "{}", {"mem": "80G", "cpus": 4, "constraint": "gpu80"}),
        ("Llama-3.1-8B-Instruct", "{}", {"mem": "80G", "cpus": 8, "gpus": 1}),
        ("Llama-3.3-70B-Instruct", "{}", {"mem": "320G", "cpus": 8, "gpus": 4}),
        (
            "Qwen2.5-7B-Instruct",
            "{account: lab, time: '4:00:00'}",
            {"mem": "80G", "account": "lab", "time": "4:00:00"},
        ),
    ],
)
def test_resources_follow_model_size(
    tmp_path: Path, model: str, compute: str, expected: dict
) -> None:
    text = f"""
experiment: {{name: res, dir: runs}}
controls: {{epochs: 1}}
models: {{base: [{{name: {model}, path: /m}}]}}
data: {{training: {{path: data/words_capitalization.json}}}}
runs: [{{name: r, type: fine-tuned, model: {model}, compute: {compute}}}]
"""
    run = plan("res.yaml", text, tmp_path).runs["r"]
    for key, value in expected.items():
        assert getattr(run.resources, key) == value, key
    if run.resources.gpus > 1:
        assert run.recipe == "lora_finetune_distributed"
        assert f"--nproc_per_node {run.resources.gpus}" in run.slurm_script


@pytest.mark.unit
def test_no_gpu_means_cpu_settings(tmp_path: Path) -> None:
    text = (
        (EXAMPLES / "cap_rank_sweep.yaml")
        .read_text()
        .replace('compute: {time: "2:00:00", mem: 48G}', "compute: {gpus: 0}")
    )
    run = plan(text=text, tmp=tmp_path).runs["rank16_lr3e-4"]
    assert (
        run.config.get("device"),
        run.config.get("dtype"),
        run.config.get("optimizer.fused"),
    ) == ("cpu", "fp32", False)
    assert "--gres" not in run.slurm_script


@pytest.mark.unit
def test_control_runs_have_no_training_config() -> None:
    base = plan().runs["base"]
    assert base.is_control and base.config is None and base.finetune_yaml is None
    assert base.slurm_script is None and base.epochs == 0


@pytest.mark.unit
def test_written_yaml_round_trips_and_is_deterministic() -> None:
    first, second = plan().runs["rank4"], plan().runs["rank4"]
    assert first.finetune_yaml == second.finetune_yaml
    assert first.spec_version == second.spec_version
    assert yaml.safe_load(first.finetune_yaml) == first.config.config


@pytest.mark.unit
def test_spec_version_changes_only_with_the_run(tmp_path: Path) -> None:
    text = (EXAMPLES / "cap_rank_sweep.yaml").read_text()
    before = plan(text=text, tmp=tmp_path).runs
    after = plan(text=text.replace("{lora_rank: 8}", "{lora_rank: 12}"), tmp=tmp_path).runs
    changed = {name for name in before if before[name].spec_version != after[name].spec_version}
    assert changed == {"rank8"}


def test_validation_is_kept_between_processes_and_errors_too(tmp_path: Path) -> None:
    """A second process plans from torchtune's kept answers without importing torch (~3 s)."""
    import os
    import subprocess
    import sys

    code = f"""
import sys
from ck_dagster.experiment.load import load_experiment
from ck_dagster.experiment.problems import ExperimentFileError
from ck_dagster.finetune.plan import plan_experiment
plan_experiment(load_experiment({str(EXAMPLES / "cap_rank_sweep.yaml")!r}))
try:
    plan_experiment(load_experiment(sys.argv[1]))
except ExperimentFileError as exc:
    print("refused:", "unexpected keyword argument 'lrr'" in str(exc))
print("torch imported:", "torch" in sys.modules)
"""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (EXAMPLES / "cap_rank_sweep.yaml")
        .read_text()
        .replace("path: data/", f"path: {EXAMPLES}/data/")
        .replace("  epochs: 2\n", "  epochs: 2\n  optimizer.lrr: 0.1\n")
    )
    env = {**os.environ, "CK_DAGSTER_CACHE": str(tmp_path / "cache")}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, str(bad)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == "refused: True\ntorch imported: True\n"
    assert runs[1] == "refused: True\ntorch imported: False\n"
    # the same experiment in another folder (every output_dir new) needs no validation either
    moved = tmp_path / "elsewhere" / "bad.yaml"
    moved.parent.mkdir()
    moved.write_text(bad.read_text().replace("cap_rank_sweep", "cap_rank_moved"))
    elsewhere = subprocess.run(
        [sys.executable, "-c", code, str(moved)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert elsewhere == "refused: True\ntorch imported: False\n"


def test_a_distributed_recipe_on_one_gpu_runs_under_torchrun_and_on_none_is_refused(
    tmp_path: Path,
) -> None:
    """torchtune refuses a distributed recipe that no distributed launcher started."""

    def plan(compute: str):
        file = tmp_path / "distributed.yaml"
        file.write_text(f"""experiment: {{name: dist, directory: runs}}
controls: {{base_recipe: llama3_1/8B_lora}}
models: {{base: [{{name: Llama-3.1-8B-Instruct, path: /models/Llama-3.1-8B-Instruct}}]}}
data: {{training: {{path: {EXAMPLES / "data" / "words_capitalization.json"}}}}}
runs: [{{name: one, type: fine-tuned, model: Llama-3.1-8B-Instruct, compute: {compute}}}]
""")
        return plan_experiment_file(file, NO_ENV)

    script = plan("{gpus: 1}").runs["one"].slurm_script
    assert "tune run --nproc_per_node 1 lora_finetune_distributed --config finetune.yaml" in script
    with pytest.raises(ExperimentFileError) as caught:
        plan("{gpus: 0}")
    assert (
        "controls.base_recipe: `lora_finetune_distributed` is a distributed recipe, which "
        "needs GPUs, but this run asks for none (use a config of "
        "`lora_finetune_single_device`, or set `compute.gpus`)" in str(caught.value)
    )
