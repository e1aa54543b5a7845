"""Settings are read from the environment when asked, with the documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from ck_dagster.settings import DEFAULT_REEVALUATE_CRON, VARIABLES, Settings, child_environment
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
    )
    assert JobEnvironment.from_env(env) == JobEnvironment(("a/1", "b/2"), "ck", None)


def test_read_when_asked_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CK_EXPERIMENTS_DIR", "/now")
    assert Settings.from_env().experiments_dir == "/now"
    monkeypatch.setenv("CK_EXPERIMENTS_DIR", "/later")
    assert Settings.from_env().experiments_dir == "/later"
    assert child_environment({"X_CK": "1"})["CK_EXPERIMENTS_DIR"] == "/later"
