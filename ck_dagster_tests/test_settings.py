"""Settings are read from the environment when asked, with the documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

# at collection: importing Dagster runs `file` once (its croniter asks for the architecture),
# which the unit tests' guard would take for a process the test started
from dagster import EnvVar, build_resources

from ck_dagster.definitions import build_definitions
from ck_dagster.settings import DEFAULT_REEVALUATE_CRON, VARIABLES, Settings, child_environment
from ck_dagster.slurm.local import LocalLauncher
from ck_dagster.slurm.script import JobEnvironment

pytestmark = pytest.mark.unit


def test_unset_means_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings(cache_dir=Path.home() / ".cache" / "ck_dagster")
    assert settings.reevaluate_cron == DEFAULT_REEVALUATE_CRON and settings.launcher == ""


def test_every_variable_is_read_and_documented() -> None:
    env = {
        "CK_LAUNCHER": " Local ",
        "CK_LOCAL_JOBS_DIR": "/j",
        "CK_JOB_MODULES": "a/1  b/2",
        "CK_JOB_CONDA_ENV": "ck",
        "CK_JOB_VENV": "none",
        "CK_EXPERIMENTS_DIR": "/e",
        "CK_REEVALUATE_CRON": "0 0 * * *",
        "CK_REEVALUATE_FORCE": " True ",
        "CK_DAGSTER_CACHE": "/c",
        "DAGSTER_HOME": "/h",
        "CK_CLUSTER_PROFILE": "generic",
        "CK_CLAIM_SETTLE_S": "0.5",
    }
    assert set(env) == set(VARIABLES)
    assert Settings.from_env(env) == Settings(
        launcher="local",
        local_jobs_dir="/j",
        job_modules=("a/1", "b/2"),
        job_conda_env="ck",
        job_venv="none",
        experiments_dir="/e",
        reevaluate_cron="0 0 * * *",
        reevaluate_force=True,
        cache_dir=Path("/c"),
        dagster_home="/h",
        cluster_profile="generic",
        claim_settle_s=0.5,
    )
    assert JobEnvironment.from_env(env) == JobEnvironment(("a/1", "b/2"), "ck", None)
    assert Settings.from_env(env).given == set(env)
    assert Settings.from_env({**env, "CK_LAUNCHER": ""}).given == set(env) - {"CK_LAUNCHER"}


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_claim_settle_time_must_be_positive_seconds(value: str) -> None:
    with pytest.raises(ValueError, match="CK_CLAIM_SETTLE_S=.*positive number of seconds"):
        Settings.from_env({"CK_CLAIM_SETTLE_S": value})


def test_read_when_asked_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CK_EXPERIMENTS_DIR", "/now")
    assert Settings.from_env().experiments_dir == "/now"
    monkeypatch.setenv("CK_EXPERIMENTS_DIR", "/later")
    assert Settings.from_env().experiments_dir == "/later"
    assert child_environment({"X_CK": "1"})["CK_EXPERIMENTS_DIR"] == "/later"


def test_the_schedule_ticks_at_the_cron_of_the_environment_the_definitions_are_built_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cron() -> str:
        schedule = build_definitions(Settings.from_env()).resolve_schedule_def("reevaluate_runs")
        return schedule.cron_schedule

    monkeypatch.delenv("CK_REEVALUATE_CRON", raising=False)
    assert cron() == DEFAULT_REEVALUATE_CRON
    monkeypatch.setenv("CK_REEVALUATE_CRON", "15 3 * * *")
    assert cron() == "15 3 * * *"


def test_resources_take_a_set_variable_as_envvar_read_when_a_run_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Set variables reach the resources through Dagster's EnvVar (resolved by the process that
    runs, so the UI names the variable); unset ones leave the resources' defaults."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with build_resources(build_definitions(Settings.from_env()).resources) as unset:
        assert unset.experiments_folder.folder() is None and unset.reevaluation.force is False
        assert unset.launcher.claim_settle_s == 2.0
        assert unset.job_environment.environment().profile.name == "della"
    variables = {
        "CK_EXPERIMENTS_DIR": "/first",
        "CK_LAUNCHER": "local",
        "CK_LOCAL_JOBS_DIR": str(tmp_path / "jobs"),
        "CK_CLUSTER_PROFILE": "generic",
        "CK_JOB_MODULES": "a/1 b/2",
        "CK_JOB_CONDA_ENV": "ck",
        "CK_REEVALUATE_FORCE": "1",
        "CK_CLAIM_SETTLE_S": "0.25",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    resources = build_definitions(Settings.from_env()).resources
    assert resources["experiments_folder"].path == EnvVar("CK_EXPERIMENTS_DIR")
    monkeypatch.setenv("CK_EXPERIMENTS_DIR", "/later")
    with build_resources(resources) as built:
        assert built.experiments_folder.folder() == Path("/later")
        assert built.reevaluation.force is True
        assert built.launcher.claim_settle_s == 0.25
        environment = built.job_environment.environment()
        assert (environment.profile.name, environment.modules) == ("generic", ("a/1", "b/2"))
        assert environment.conda_env == "ck"
        launcher = built.launcher.launcher(lambda message: None)
        assert isinstance(launcher, LocalLauncher)
        assert launcher.state_dir == (tmp_path / "jobs").resolve()
