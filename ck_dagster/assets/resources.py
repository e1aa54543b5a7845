"""Deployment settings as Dagster resources: they say how jobs run here, not what they run."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from ck_dagster.finetune.cluster_profile import deployment_environment
from ck_dagster.settings import Settings
from ck_dagster.slurm.script import JobEnvironment


class JobEnvironmentResource(ConfigurableResource):
    """How SLURM jobs activate their software: module loads, a conda env, a venv, or none.

    Left empty, the ``CK_JOB_MODULES`` / ``CK_JOB_CONDA_ENV`` / ``CK_JOB_VENV`` variables
    apply, then the cluster profile's environment, then the virtual environment Dagster itself
    runs in. ``cluster_profile`` chooses the site's SLURM policy (ck_dagster.slurm.profile).
    """

    modules: list[str] = []
    conda_env: str | None = None
    venv: str | None = None
    #: the cluster profile (``della``, ``generic`` or a profile file's path); left empty,
    #: ``CK_CLUSTER_PROFILE`` applies, else ``della``.
    cluster_profile: str | None = None

    def environment(self) -> JobEnvironment:
        """The domain-level job environment these settings describe."""
        environment = deployment_environment(profile=self.cluster_profile)
        if not (self.modules or self.conda_env or self.venv):
            return environment
        venv = None if self.venv in (None, "", "none") else self.venv
        return JobEnvironment(tuple(self.modules), self.conda_env, venv, environment.profile)


class ExperimentsFolderResource(ConfigurableResource):
    """The folder the experiments sensor watches for experiment files.

    Left empty, ``CK_EXPERIMENTS_DIR`` applies; with neither, the sensor does nothing.
    """

    path: str | None = None

    def folder(self) -> Path | None:
        """The watched folder, if one is configured."""
        value = self.path or Settings.from_env().experiments_dir
        return Path(value).expanduser() if value else None
