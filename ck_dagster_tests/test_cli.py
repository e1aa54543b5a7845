"""The ck-dagster command as a user runs it: clear errors, no tracebacks, nothing half-done."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dagster import DagsterInstance

from ck_dagster_tests.fixtures.dagster import run_command

MALFORMED = Path(__file__).parent / "experiment" / "malformed"


def test_register_refuses_bad_files_without_traceback_or_side_effects(
    dagster_home: Path, example_copy, tmp_path: Path
) -> None:
    good = example_copy("cap_rank_sweep.yaml")
    bad = MALFORMED / "unknown_parameter.yaml"
    result = run_command(["ck-dagster", "register", good, bad], check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "did you mean `lora_rank`" in result.stderr
    assert f"{bad}:20: runs[0].parameters.lora_rnk" in result.stderr
    # one refused file registers nothing, not even the good one
    with DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions("runs") == []
    assert not (tmp_path / "runs").exists()


def test_register_needs_dagster_home(example_copy, monkeypatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    result = run_command(
        ["ck-dagster", "register", example_copy("cap_rank_sweep.yaml")], check=False
    )
    assert result.returncode == 2 and "DAGSTER_HOME is not set" in result.stderr


def test_dry_run_renders_every_run(example_copy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_command(
        ["ck-dagster", "dry-run", example_copy("model_comparison.yaml"), "--out", out]
    )
    assert "5 runs valid; nothing was registered or submitted" in result.stdout
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        f"{run}/{f}"
        for run in ["llama_lr1e-4", "llama_lr5e-4", "qwen_lr1e-4", "qwen_lr5e-4_2gpu"]
        for f in ("finetune.slurm", "finetune.yaml")
    ]
    for script in out.rglob("finetune.slurm"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert not (tmp_path / "runs").exists()


def test_recipes_lists_the_catalog() -> None:
    result = run_command(["ck-dagster", "recipes"])
    assert "lora_finetune_single_device" in result.stdout
    assert "llama3_2/1B_lora_single_device" in result.stdout


def test_dagster_validates_the_definitions() -> None:
    result = run_command(["dagster", "definitions", "validate", "-m", "ck_dagster"])
    assert "All code locations passed validation" in result.stdout + result.stderr
