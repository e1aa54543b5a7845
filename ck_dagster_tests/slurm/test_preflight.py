"""The preflight against the real test cluster (partitions debug, gpu, nomig; feature gpu80;
4 GPUs a node): requests it could never run are named before anything is submitted."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

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


def test_dry_run_names_every_run_the_cluster_could_never_run(
        slurm_cluster, example_copy, bad_profile: dict[str, str], tmp_path: Path) -> None:
    file = example_copy("cap_rank_sweep.yaml")
    file.write_text(file.read_text().replace(
        'compute: {time: "2:00:00", mem: 48G}',
        'compute: {time: "2:00:00", mem: 48G, partition: gpu, constraint: a100&gpu80, gpus: 8}'))
    result = run_command(["ck-dagster", "dry-run", file, "--out", tmp_path / "out"],
                         check=False, env=bad_profile)
    assert result.returncode == 1, result
    refused = [line for line in result.stderr.splitlines() if "could never run" in line]
    assert len(refused) == 5, result.stderr  # 3 runs on bigmem; 2 problems of rank16_lr3e-4
    assert "run `cap_rank_sweep/rank4` (partition=bigmem, gres=gpu:1, mem=40G, time=1:00:00): " \
        "partition `bigmem` does not exist on this cluster (it has `debug`, `gpu`, `nomig`): " \
        "set `compute.partition` (for the experiment or the run), or choose a cluster " \
        "profile" in result.stderr
    assert "run `cap_rank_sweep/rank16_lr3e-4` (partition=gpu, constraint=a100&gpu80, " \
        "gres=gpu:8, mem=48G, time=2:00:00): no node of partition `gpu` has feature `a100` " \
        "(features there: `gpu80`): set `compute.constraint`" in result.stderr
    assert "8 GPU(s) asked for, but the nodes of partition `gpu` have at most 4" \
        in result.stderr
    assert "4 run(s) would be refused by the cluster" in result.stderr
    # files are still written for a person to read
    assert (tmp_path / "out" / "rank4" / "finetune.slurm").is_file()

    ok = run_command(["ck-dagster", "dry-run", file, "--out", tmp_path / "out2"], check=False,
                     env={"CK_CLUSTER_PROFILE": "della"})
    assert ok.returncode == 1 and "rank4" not in ok.stderr  # only the run's own request fails
    file.write_text(file.read_text().replace(", constraint: a100&gpu80, gpus: 8", ""))
    ok = run_command(["ck-dagster", "dry-run", file, "--out", tmp_path / "out3"],
                     env={"CK_CLUSTER_PROFILE": "della"})
    assert "the cluster would run every job (sinfo, sbatch --test-only)" in ok.stdout


def test_sbatch_test_only_catches_what_sinfo_cannot_see(slurm_cluster, example_copy,
                                                        tmp_path: Path) -> None:
    file = example_copy("cap_rank_sweep.yaml")
    file.write_text(file.read_text().replace('mem: 48G}', 'mem: 9000G}'))
    result = run_command(["ck-dagster", "dry-run", file, "--out", tmp_path / "out"],
                         check=False, env={"CK_CLUSTER_PROFILE": "della"})
    assert result.returncode == 1
    assert "run `cap_rank_sweep/rank16_lr3e-4` (partition=nomig, gres=gpu:1, mem=9000G, " \
        "time=2:00:00): SLURM refuses it: allocation failure: Requested node configuration " \
        "is not available" in result.stderr


@pytest.mark.slow
def test_register_warns_and_checkpoint_refuses_before_submitting(
        slurm_cluster, dagster_home: Path, tmp_path: Path, tiny_model_dir: Path,
        capitalization_data: Path, bad_profile: dict[str, str]) -> None:
    name = f"tiny_{uuid.uuid4().hex[:6]}"
    file = write_tiny_experiment(tmp_path, tiny_model_dir, capitalization_data, name=name,
                                 runs="\n  - {name: lora8, type: fine-tuned, model: tiny-llama}\n")
    registered = run_command(["ck-dagster", "register", file], env=bad_profile)
    assert f"warning: {file}: the cluster could never run run `{name}/lora8` " \
        "(partition=bigmem, mem=4G, time=0:30:00): partition `bigmem` does not exist" \
        in registered.stderr
    key = load_experiment(file).partition_key("lora8")
    result = materialize_with(bad_profile, key)
    assert result.returncode != 0
    assert "Nothing was submitted: the cluster could never run run " in result.stdout + \
        result.stderr
    assert SlurmLauncher().find(f"ck:{name}/lora8:train") == []


def materialize_with(env: dict[str, str], key: str):
    return run_command(["dagster", "asset", "materialize", "-m", "ck_dagster", "--select",
                        "run_config,checkpoint", "--partition", key], check=False, timeout=600,
                       env={"CK_LAUNCHER": "slurm", **env})
