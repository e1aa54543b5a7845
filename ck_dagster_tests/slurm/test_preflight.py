"""The preflight against the real test cluster (partitions debug, gpu, nomig; feature gpu80;
4 GPUs a node): requests it could never run are named before anything is submitted."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ck_dagster.cli import main
from ck_dagster.experiment.load import load_experiment
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster_tests.fixtures.dagster import run_command
from ck_dagster_tests.fixtures.experiments import write_tiny_experiment

pytestmark = [pytest.mark.slurm]

#: a site profile whose 1B partition and 3B feature this cluster lacks.
PROFILE = """base: della
sizes:
  1B: {partition: bigmem}
  tiny: {partition: bigmem}
"""


@pytest.fixture
def bad_profile(tmp_path: Path) -> dict[str, str]:
    profile = tmp_path / "site.yaml"
    profile.write_text(PROFILE)
    return {"CK_CLUSTER_PROFILE": str(profile)}


def dry_run(
    file: Path,
    out: Path,
    profile: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str, str]:
    """``ck-dagster dry-run FILE`` in this process (exit code, stdout, stderr)."""
    monkeypatch.setenv("CK_CLUSTER_PROFILE", profile)
    code = main(["dry-run", str(file), "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dry_run_names_every_run_the_cluster_could_never_run(
    slurm_cluster,
    example_copy,
    bad_profile: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = example_copy("cap_rank_sweep.yaml")
    file.write_text(
        file.read_text().replace(
            'compute: {time: "2:00:00", mem: 48G}',
            'compute: {time: "2:00:00", mem: 48G, partition: gpu, constraint: a100&gpu80, gpus: 8}',
        )
    )
    code, _, stderr = dry_run(
        file, tmp_path / "out", bad_profile["CK_CLUSTER_PROFILE"], monkeypatch, capsys
    )
    assert code == 1, stderr
    refused = [line for line in stderr.splitlines() if "could never run" in line]
    # one line for the 3 runs on bigmem (one request, one reason); 2 problems of rank16_lr3e-4
    assert len(refused) == 3, stderr
    assert (
        "runs `cap_rank_sweep/rank4`, `cap_rank_sweep/rank8`, `cap_rank_sweep/rank16` "
        "(partition=bigmem, gres=gpu:1, mem=40G, time=1:00:00): "
        "partition `bigmem` does not exist on this cluster (it has `debug`, `gpu`, `nomig`): "
        "set `compute.partition` (for the experiment or the run), or choose a cluster "
        "profile" in stderr
    )
    assert (
        "run `cap_rank_sweep/rank16_lr3e-4` (partition=gpu, constraint=a100&gpu80, "
        "gres=gpu:8, mem=48G, time=2:00:00): no node of partition `gpu` has feature `a100` "
        "(features there: `gpu80`): set `compute.constraint`" in stderr
    )
    assert "8 GPU(s) asked for, but the nodes of partition `gpu` have at most 4" in stderr
    assert "4 run(s) would be refused by the cluster" in stderr
    # files are still written for a person to read
    assert (tmp_path / "out" / "rank4" / "finetune.slurm").is_file()

    code, _, stderr = dry_run(file, tmp_path / "out2", "della", monkeypatch, capsys)
    assert code == 1 and "rank4" not in stderr  # only the run's own request fails
    file.write_text(file.read_text().replace(", constraint: a100&gpu80, gpus: 8", ""))
    code, stdout, _ = dry_run(file, tmp_path / "out3", "della", monkeypatch, capsys)
    assert code == 0
    assert "the cluster would run every job (sinfo, sbatch --test-only)" in stdout


def test_sbatch_test_only_catches_what_sinfo_cannot_see(
    slurm_cluster,
    example_copy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = example_copy("cap_rank_sweep.yaml")
    file.write_text(file.read_text().replace("mem: 48G}", "mem: 9000G}"))
    code, _, stderr = dry_run(file, tmp_path / "out", "della", monkeypatch, capsys)
    assert code == 1
    assert (
        "run `cap_rank_sweep/rank16_lr3e-4` (partition=nomig, gres=gpu:1, mem=9000G, "
        "time=2:00:00): SLURM refuses it: allocation failure: Requested node configuration "
        "is not available" in stderr
    )


@pytest.mark.slow
def test_register_warns_and_checkpoint_refuses_before_submitting(
    slurm_cluster,
    dagster_home: Path,
    tmp_path: Path,
    tiny_model_dir: Path,
    capitalization_data: Path,
    bad_profile: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"tiny_{uuid.uuid4().hex[:6]}"
    file = write_tiny_experiment(
        tmp_path,
        tiny_model_dir,
        capitalization_data,
        name=name,
        runs="\n  - {name: lora8, type: fine-tuned, model: tiny-llama}\n",
    )
    monkeypatch.setenv("CK_CLUSTER_PROFILE", bad_profile["CK_CLUSTER_PROFILE"])
    assert main(["register", str(file)]) == 0
    assert (
        f"warning: {file}: the cluster could never run run `{name}/lora8` "
        "(partition=bigmem, mem=4G, time=0:30:00): partition `bigmem` does not exist"
        in capsys.readouterr().err
    )
    key = load_experiment(file).partition_key("lora8")
    result = run_command(
        [
            "dagster",
            "asset",
            "materialize",
            "-m",
            "ck_dagster",
            "--select",
            "run_config,checkpoint",
            "--partition",
            key,
        ],
        check=False,
        timeout=600,
        env={"CK_LAUNCHER": "slurm"},
    )
    assert result.returncode != 0
    assert (
        "Nothing was submitted: the cluster could never run run " in result.stdout + result.stderr
    )
    assert SlurmLauncher().find(f"ck:{name}/lora8:train") == []
