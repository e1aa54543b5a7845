"""Cluster profiles: site policy as data, chosen per deployment, applied before the
experiment's ``compute:`` and the run's (asserted on the written ``finetune.slurm``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import build_resources

from ck_dagster.assets.resources import JobEnvironmentResource
from ck_dagster.definitions import build_definitions
from ck_dagster.errors import CkError
from ck_dagster.finetune.cluster_profile import deployment_environment, load_profile
from ck_dagster.finetune.plan import plan_experiment_file
from ck_dagster.settings import Settings
from ck_dagster.slurm.profile import DELLA, GENERIC, ClusterProfile
from ck_dagster.slurm.script import JobEnvironment

SITE = """name: mysite
base: della
sizes:
  1B: {partition: gpu, mem: 32G}
  3B: {constraint: null, partition: big}
mig: {partition: mig, mem: 10G}
defaults: {account: my_lab, qos: short, time: "2:00:00"}
max_time: "1-00:00:00"
environment: {modules: [anaconda3/2025.6], conda_env: ck}
"""


def sbatch_options(script: str) -> dict[str, str]:
    options = [
        line.removeprefix("#SBATCH --")
        for line in script.splitlines()
        if line.startswith("#SBATCH --")
    ]
    return dict(option.partition("=")[::2] for option in options)


def test_presets_della_keeps_the_v1_rules_and_generic_leaves_placement_to_the_cluster() -> None:
    assert (DELLA.resources("1B").partition, DELLA.resources("8B").constraint) == ("nomig", "gpu80")
    mig = DELLA.request("1B", {"mig": True})
    assert (mig.mem, mig.partition) == ("16G", None)
    for size in ("1B", "3B", "8B", "70B"):
        generic = GENERIC.resources(size)
        assert (generic.partition, generic.constraint) == (None, None)
        assert (generic.mem, generic.gpus) == (
            DELLA.resources(size).mem,
            DELLA.resources(size).gpus,
        )


def test_a_site_profile_overrides_its_preset(tmp_path: Path) -> None:
    file = tmp_path / "site.yaml"
    file.write_text(SITE)
    profile = load_profile(str(file))
    one = profile.resources("1B")
    assert (one.partition, one.mem, one.account, one.qos, one.time) == (
        "gpu",
        "32G",
        "my_lab",
        "short",
        "2:00:00",
    )
    three = profile.resources("3B")
    assert (three.partition, three.constraint, three.mem) == ("big", None, "80G")
    mig = profile.request("1B", {"mig": True})
    assert (mig.partition, mig.mem) == ("mig", "10G")
    assert (profile.max_time, DELLA.max_time) == ("1-00:00:00", None)
    environment = deployment_environment({"CK_CLUSTER_PROFILE": str(file)})
    assert environment.profile == profile
    assert environment.lines() == [
        "module purge",
        "module load anaconda3/2025.6",
        'eval "$(conda shell.bash hook)"',
        "conda activate ck",
    ]


def test_precedence_is_size_then_profile_then_experiment_then_run(
    tmp_path: Path, example_copy
) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    file = example_copy("cap_rank_sweep.yaml")
    file.write_text(
        file.read_text().replace("\nruns:", '\ncompute: {time: "3:00:00", qos: long}\nruns:')
    )
    environment = JobEnvironment(profile=load_profile(str(site)))
    plan = plan_experiment_file(file, environment)
    rank4 = sbatch_options(plan.runs["rank4"].slurm_script)
    # size: 4 CPUs, 1 GPU; profile: partition, account, 32G; experiment: time and qos
    assert (
        rank4["cpus-per-task"],
        rank4["gres"],
        rank4["partition"],
        rank4["account"],
        rank4["mem"],
        rank4["time"],
        rank4["qos"],
    ) == ("4", "gpu:1", "gpu", "my_lab", "32G", "3:00:00", "long")
    # the run's own compute has the last word
    overridden = sbatch_options(plan.runs["rank16_lr3e-4"].slurm_script)
    assert (overridden["time"], overridden["mem"], overridden["qos"]) == ("2:00:00", "48G", "long")


def test_the_profile_is_a_resource_setting_and_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def profile() -> ClusterProfile:
        """The profile of the resource the deployment's definitions build."""
        resources = build_definitions(Settings.from_env()).resources
        with build_resources({"job_environment": resources["job_environment"]}) as built:
            return built.job_environment.environment().profile

    monkeypatch.setenv("CK_CLUSTER_PROFILE", "generic")
    assert profile() is GENERIC
    assert JobEnvironmentResource(cluster_profile="della").environment().profile is DELLA
    monkeypatch.delenv("CK_CLUSTER_PROFILE")
    assert profile() is DELLA
    assert JobEnvironmentResource().environment().profile is DELLA


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sizes: {1B: {mem: lots}}\n",
            "site.yaml:1: sizes.1B.mem: Value error, is not a SLURM memory size",
        ),
        ("sizes: {2B: {mem: 8G}}\n", "sizes.2B: unknown model size"),
        (
            "max_time: forever\n",
            "site.yaml:1: max_time: Value error, is not a SLURM time limit",
        ),
        ("partitions: {}\n", "site.yaml:1: partitions: Extra inputs are not permitted"),
    ],
)
def test_a_bad_profile_is_refused_with_its_file_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    file = tmp_path / "site.yaml"
    file.write_text(text)
    with pytest.raises(CkError, match=None) as caught:
        load_profile(str(file))
    assert expected in str(caught.value)


def test_an_unknown_profile_names_the_presets() -> None:
    with pytest.raises(CkError, match="neither a preset .della, generic. nor a file"):
        load_profile("bigcluster")
