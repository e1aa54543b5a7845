"""Cluster profile files: a site's SLURM policy (``ck_dagster.slurm.profile``) read from YAML
and checked like an experiment file, and the job environment of this deployment.

A file starts from a preset (``base:``) and overrides it::

    base: generic
    sizes:
      1B: {partition: gpu, mem: 32G}
    mig: {partition: mig, mem: 10G}
    defaults: {account: my_lab, qos: short, time: "2:00:00"}
    max_time: "1-00:00:00"
    environment: {modules: [anaconda3/2025.6], conda_env: ck}

``sizes`` and ``defaults`` take the keys of an experiment's ``compute:``; a null value removes
an option of the preset (``constraint: null``). ``max_time`` is the longest ``--time`` the site
lets a job ask for: a training job that ran out of time resumes from its last saved epoch with
twice its time, up to ``max_time`` (without it, with the same time).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ck_dagster.errors import CkError
from ck_dagster.experiment.schema import Compute, slurm_time
from ck_dagster.experiment.yaml_lines import load_yaml
from ck_dagster.settings import Settings
from ck_dagster.slurm.profile import PRESETS, ClusterProfile
from ck_dagster.slurm.script import JobEnvironment


class _Environment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modules: list[str] = Field(default_factory=list)
    conda_env: str | None = None
    venv: str | None = None


class _ProfileFile(BaseModel):
    """A profile file as written (sizes and rules override its ``base`` preset)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    base: Literal["della", "generic"] = "generic"
    sizes: dict[str, Compute] = Field(default_factory=dict)
    mig: Compute | None = None
    defaults: Compute | None = None
    max_time: str | None = None
    environment: _Environment = Field(default_factory=_Environment)

    @field_validator("max_time")
    @classmethod
    def _max_time(cls, value: str | None) -> str | None:
        return None if value is None else slurm_time(value)


def load_profile(choice: str) -> ClusterProfile:
    """A preset by name, or a profile file by path (refused with the field and fix)."""
    if choice in PRESETS:
        return PRESETS[choice]
    path = Path(choice).expanduser().resolve()
    if not path.is_file():
        raise CkError(
            f"cluster profile `{choice}` is neither a preset "
            f"({', '.join(PRESETS)}) nor a file: set CK_CLUSTER_PROFILE (or the "
            "job_environment resource's cluster_profile) to one of them"
        )
    stat = path.stat()
    return _load_file(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _load_file(path: Path, size: int, mtime_ns: int) -> ClusterProfile:
    loaded = load_yaml(path.read_text(encoding="utf-8"))
    if loaded.problems:
        problem = loaded.problems[0]
        raise CkError(f"{path}:{problem.line or 1}: {problem.message}")
    try:
        spec = _ProfileFile.model_validate(loaded.data or {})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        line = loaded.line_of(tuple(error["loc"])) or 1
        raise CkError(
            f"{path}:{line}: {where}: {error['msg']} (see the profile format in "
            "ck_dagster/finetune/cluster_profile.py)"
        ) from None
    base = PRESETS[spec.base]
    unknown = sorted(set(spec.sizes) - set(dict(base.sizes)))
    if unknown:
        raise CkError(
            f"{path}: sizes.{unknown[0]}: unknown model size (sizes: "
            f"{', '.join(size for size, _ in base.sizes)})"
        )
    defaults = _set(spec.defaults)
    sizes = tuple(
        (size, base.request(size, defaults, _set(spec.sizes.get(size)))) for size, _ in base.sizes
    )
    mig = dict(base.mig)
    if spec.mig is not None:
        mig.update(spec.mig.model_dump(exclude_unset=True, exclude={"mig"}))
    return ClusterProfile(
        spec.name or path.stem,
        sizes,
        tuple(mig.items()),
        tuple(spec.environment.modules),
        spec.environment.conda_env,
        spec.environment.venv,
        spec.max_time,
    )


def _set(compute: Compute | None) -> dict[str, Any]:
    """The fields a profile section sets (``mig`` has no meaning there)."""
    return compute.model_dump(exclude_unset=True, exclude={"mig"}) if compute else {}


def deployment_environment(
    environ: Mapping[str, str] | None = None, profile: str | None = None
) -> JobEnvironment:
    """This deployment's job environment and cluster profile (``profile``, else
    ``CK_CLUSTER_PROFILE``, else della), as ``environ`` (default: this process's) gives them."""
    chosen = profile or Settings.from_env(environ).cluster_profile
    return JobEnvironment.from_env(environ, load_profile(chosen))
