"""Every environment variable ck_dagster reads, in one place, read when asked (never at import).

The CLI and the domain packages take a :class:`Settings`; the Dagster resources have config
fields of their own, which ``ck_dagster.definitions`` fills from these (as ``EnvVar`` where a
variable is set) when it builds the definitions. Child processes (jobs, SLURM's clients) get this
process's environment through :func:`child_environment`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: the variables, and what each sets (the README's "Running on a cluster" explains them).
VARIABLES = {
    "CK_LAUNCHER": "slurm or local; unset: SLURM when sbatch is on PATH",
    "CK_LOCAL_JOBS_DIR": "where the local launcher keeps its job records",
    "CK_JOB_MODULES": "modules every job loads (space-separated)",
    "CK_JOB_CONDA_ENV": "the conda environment every job activates",
    "CK_JOB_VENV": "the virtual environment every job activates (none: nothing)",
    "CK_CLUSTER_PROFILE": "the cluster profile: della (default), generic or a profile file",
    "CK_EXPERIMENTS_DIR": "the folder the experiments sensor watches",
    "CK_REEVALUATE_CRON": "when the reevaluate_runs schedule runs (cron)",
    "CK_REEVALUATE_FORCE": "1/true: reevaluate_runs evaluates every trained run, current or not",
    "CK_DAGSTER_CACHE": "where the tiny model and data are cached",
    "CK_CLAIM_SETTLE_S": "seconds a claim on a run waits before it is read back (default 2)",
    "DAGSTER_HOME": "the Dagster instance folder (Dagster's own variable)",
}

DEFAULT_REEVALUATE_CRON = "0 6 * * 1"
DEFAULT_CLAIM_SETTLE_S = 2.0


@dataclass(frozen=True)
class Settings:
    """The deployment's settings as the environment gives them (unset: None or the default)."""

    launcher: str = ""
    local_jobs_dir: str | None = None
    job_modules: tuple[str, ...] = ()
    job_conda_env: str | None = None
    #: None: unset (a job activates Dagster's own venv); "none": activate nothing.
    job_venv: str | None = None
    #: the cluster profile jobs follow (ck_dagster.slurm.profile): a preset name or a path.
    cluster_profile: str = "della"
    experiments_dir: str | None = None
    reevaluate_cron: str = DEFAULT_REEVALUATE_CRON
    #: the reevaluate_runs schedule evaluates every trained run, not only the stale ones.
    reevaluate_force: bool = False
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "ck_dagster")
    #: how long a process that claims a run waits before reading the claim back (Fischer's
    #: timed mutual exclusion: far longer than a write to the instance takes).
    claim_settle_s: float = DEFAULT_CLAIM_SETTLE_S
    dagster_home: str | None = None
    #: the PATH that ``sbatch`` is looked up on.
    path: str | None = None
    #: the variables of :data:`VARIABLES` the environment sets (not empty): where a Dagster
    #: resource may take its value as ``EnvVar`` (``ck_dagster.definitions``).
    given: frozenset[str] = field(default=frozenset(), compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings ``environ`` (default: this process's environment, read now) gives."""
        env = os.environ if environ is None else environ
        return cls(
            launcher=env.get("CK_LAUNCHER", "").strip().lower(),
            local_jobs_dir=env.get("CK_LOCAL_JOBS_DIR") or None,
            job_modules=tuple(env.get("CK_JOB_MODULES", "").split()),
            job_conda_env=env.get("CK_JOB_CONDA_ENV") or None,
            job_venv=env.get("CK_JOB_VENV"),
            cluster_profile=env.get("CK_CLUSTER_PROFILE") or "della",
            experiments_dir=env.get("CK_EXPERIMENTS_DIR") or None,
            reevaluate_cron=env.get("CK_REEVALUATE_CRON") or DEFAULT_REEVALUATE_CRON,
            reevaluate_force=_flag(env.get("CK_REEVALUATE_FORCE")),
            cache_dir=Path(env.get("CK_DAGSTER_CACHE") or Path.home() / ".cache" / "ck_dagster"),
            claim_settle_s=_seconds(env, "CK_CLAIM_SETTLE_S", DEFAULT_CLAIM_SETTLE_S),
            dagster_home=env.get("DAGSTER_HOME") or None,
            path=env.get("PATH"),
            given=frozenset(name for name in VARIABLES if env.get(name)),
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds, or ``default`` when unset; anything else is refused."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name}={text!r}: give a positive number of seconds, e.g. {default}")
    return value


def _flag(value: str | None) -> bool:
    """A yes/no variable: ``1``, ``true``, ``yes`` or ``on`` (any case) mean yes."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def set_defaults(values: Mapping[str, str]) -> None:
    """Set variables that libraries in this process read (offline modes), where not set."""
    for name, value in values.items():
        os.environ.setdefault(name, value)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a child process (a job, an sbatch) gets: this process's, plus ``extra``."""
    return {**os.environ, **(extra or {})}
