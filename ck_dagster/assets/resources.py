"""Deployment settings as Dagster resources: they say how jobs run here, not what they run."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from ck_dagster.finetune.cluster_profile import load_profile
from ck_dagster.slurm.profile import DELLA
from ck_dagster.slurm.script import JobEnvironment


class JobEnvironmentResource(ConfigurableResource):
    """How SLURM jobs activate their software: module loads, a conda env, a venv, or none.

    ``ck_dagster.definitions`` fills these from the ``CK_JOB_MODULES`` / ``CK_JOB_CONDA_ENV``
    / ``CK_JOB_VENV`` variables; left empty, the cluster profile's environment applies, then
    the virtual environment Dagster itself runs in. ``cluster_profile`` chooses the site's
    SLURM policy (ck_dagster.slurm.profile).
    """

    modules: list[str] = []
    conda_env: str | None = None
    venv: str | None = None
    #: the cluster profile (``della``, ``generic`` or a profile file's path; empty: ``della``),
    #: from ``CK_CLUSTER_PROFILE``.
    cluster_profile: str | None = None

    def environment(self) -> JobEnvironment:
        """The domain-level job environment these settings describe."""
        profile = load_profile(self.cluster_profile) if self.cluster_profile else DELLA
        return JobEnvironment.chosen(tuple(self.modules), self.conda_env, self.venv, profile)


class ExperimentsFolderResource(ConfigurableResource):
    """The folder the experiments sensor watches for experiment files.

    ``ck_dagster.definitions`` sets it from ``CK_EXPERIMENTS_DIR``; with none, the sensor does
    nothing.
    """

    path: str | None = None

    def folder(self) -> Path | None:
        """The watched folder, if one is configured."""
        return Path(self.path).expanduser() if self.path else None
