"""Deployment settings as Dagster resources: they say how jobs run here, not what they run."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from ck_dagster.settings import Settings
from ck_dagster.slurm.script import JobEnvironment


class JobEnvironmentResource(ConfigurableResource):
    """How SLURM jobs activate their software: module loads, a conda env, a venv, or none.

    Left empty, the ``CK_JOB_MODULES`` / ``CK_JOB_CONDA_ENV`` / ``CK_JOB_VENV`` variables
    apply, and without those the virtual environment Dagster itself runs in.
    """

    modules: list[str] = []
    conda_env: str | None = None
    venv: str | None = None

    def environment(self) -> JobEnvironment:
        """The domain-level job environment these settings describe."""
        if not (self.modules or self.conda_env or self.venv):
            return JobEnvironment.from_env()
        venv = None if self.venv in (None, "", "none") else self.venv
        return JobEnvironment(tuple(self.modules), self.conda_env, venv)


class ExperimentsFolderResource(ConfigurableResource):
    """The folder the experiments sensor watches for experiment files.

    Left empty, ``CK_EXPERIMENTS_DIR`` applies; with neither, the sensor does nothing.
    """

    path: str | None = None

    def folder(self) -> Path | None:
        """The watched folder, if one is configured."""
        value = self.path or Settings.from_env().experiments_dir
        return Path(value).expanduser() if value else None
