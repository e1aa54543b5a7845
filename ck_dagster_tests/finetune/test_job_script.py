"""finetune.slurm: SBATCH header from resources, quoted user values, valid bash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ck_dagster.slurm.resources import Resources
from ck_dagster.slurm.script import JobEnvironment, JobScript


def script(workdir: str = "/scratch/exp/run", **env) -> JobScript:
    return JobScript(
        job_name="ck:exp/run:train",
        workdir=Path(workdir),
        log_path=Path(workdir) / "artifacts" / "slurm-%j.out",
        resources=Resources(mem="40G", cpus=4, gpus=2, partition="nomig", account="lab"),
        command=[
            "tune",
            "run",
            "--nproc_per_node",
            "2",
            "lora_finetune_distributed",
            "--config",
            "finetune.yaml",
        ],
        environment=JobEnvironment(**env),
    )


@pytest.mark.unit
def test_header_follows_resources() -> None:
    text = script().render()
    for line in [
        "#SBATCH --job-name=ck:exp/run:train",
        "#SBATCH --mem=40G",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --partition=nomig",
        "#SBATCH --account=lab",
        "#SBATCH --output=/scratch/exp/run/artifacts/slurm-%j.out",
        "#SBATCH --time=1:00:00",
    ]:
        assert line in text.splitlines()
    assert "--constraint" not in text
    assert text.splitlines()[-1] == (
        'tune run --nproc_per_node 2 lora_finetune_distributed --config finetune.yaml "$@"'
    )


@pytest.mark.unit
def test_environment_activation_variants() -> None:
    text = script(modules=("anaconda3/2025.6", "cuda 12"), conda_env="my env").render()
    assert "module purge" in text and "module load anaconda3/2025.6 'cuda 12'" in text
    assert "conda activate 'my env'" in text
    assert "source /opt/venv/bin/activate" in script(venv="/opt/venv").render()
    plain = script().render()
    assert "module" not in plain and "conda" not in plain and "activate" not in plain


def test_user_values_are_quoted_and_script_is_valid_bash(tmp_path: Path) -> None:
    hostile = tmp_path / "a dir" / "it's $(touch pwned) `touch x`; rm -rf ~"
    (hostile / "bin").mkdir(parents=True)
    (hostile / "bin" / "activate").write_text("export ACTIVATED=yes\n")
    job = JobScript(
        job_name="ck:e/r:train",
        workdir=hostile,
        log_path=hostile / "log-%j.out",
        resources=Resources(mem="1G", cpus=1, gpus=0),
        command=["bash", "-c", 'echo "$ACTIVATED $PWD"'],
        environment=JobEnvironment(venv=str(hostile)),
    )
    file = tmp_path / "job.slurm"
    file.write_text(job.render())
    subprocess.run(["bash", "-n", str(file)], check=True)
    done = subprocess.run(
        ["bash", str(file)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == f"yes {hostile}"
    assert not list(tmp_path.rglob("pwned")) and not list(tmp_path.rglob("x"))


@pytest.mark.unit
def test_default_environment_is_this_venv(monkeypatch) -> None:
    for name in ("CK_JOB_MODULES", "CK_JOB_CONDA_ENV", "CK_JOB_VENV"):
        monkeypatch.delenv(name, raising=False)
    import sys

    environment = JobEnvironment.from_env({})
    assert environment.venv == (sys.prefix if sys.prefix != sys.base_prefix else None)
    assert JobEnvironment.from_env({"CK_JOB_VENV": "none"}).venv is None
    assert JobEnvironment.from_env({"CK_JOB_MODULES": "a b"}).modules == ("a", "b")
