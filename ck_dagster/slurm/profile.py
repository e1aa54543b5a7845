"""Cluster profiles: a site's SLURM policy as data, chosen per deployment.

A profile says what each model size asks for (partition, constraint, GRES, memory, CPUs), the
MIG rule, the default account, QoS and time, and how jobs activate their software (modules,
conda, venv: what cruijff_kit v1 kept in ``claude.local.md``). Two presets ship:

- ``della``: v1's rules (1B on ``nomig``, larger models with ``--constraint=gpu80``, MIG: 16G
  and no partition);
- ``generic``: the same sizes without partition or constraint: the cluster's defaults.

A site's profile is a YAML file that starts from a preset (``base:``) and overrides it::

    base: generic
    sizes:
      1B: {partition: gpu, mem: 32G}
    mig: {partition: mig, mem: 10G}
    defaults: {account: my_lab, qos: short, time: "2:00:00"}
    environment: {modules: [anaconda3/2025.6], conda_env: ck}

Choose it with the ``job_environment`` resource's ``cluster_profile`` or ``CK_CLUSTER_PROFILE``
(``della``, ``generic`` or a path); ``della`` when neither is set.
SLURM requests follow: model size -> profile -> experiment ``compute:`` -> ``runs[].compute``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ck_dagster.errors import CkError
from ck_dagster.experiment.schema import Compute
from ck_dagster.experiment.yaml_lines import load_yaml
from ck_dagster.slurm.resources import RESOURCES_BY_SIZE, Resources

#: the environment variable that chooses the profile in the shell.
PROFILE_VARIABLE = "CK_CLUSTER_PROFILE"
DEFAULT_PROFILE = "della"

Settings = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class ClusterProfile:
    """One site's policy (hashable: plans are cached by the deployment they are made for)."""

    name: str
    #: model size -> what a job of that size asks for.
    sizes: tuple[tuple[str, Resources], ...]
    #: what ``mig: true`` sets (a None value removes the option, e.g. the partition).
    mig: Settings
    modules: tuple[str, ...] = ()
    conda_env: str | None = None
    venv: str | None = None

    def resources(self, size: str) -> Resources:
        """What a job for a model of ``size`` asks for under this profile."""
        return dict(self.sizes)[size]

    def request(self, size: str, *overrides: Mapping[str, Any]) -> Resources:
        """A job's request: the size's, then each ``compute`` mapping in turn (the experiment's,
        then the run's; a None value removes an option); the MIG rule applies when the last
        word on ``mig`` is true."""
        compute: dict[str, Any] = {}
        for layer in overrides:
            compute.update(layer)
        result = self.resources(size)
        if compute.pop("mig", False):
            result = replace(result, **dict(self.mig))
        return replace(result, **compute)

    @property
    def has_environment(self) -> bool:
        """Whether the profile says how jobs activate their software."""
        return bool(self.modules or self.conda_env or self.venv)


DELLA = ClusterProfile("della", tuple(RESOURCES_BY_SIZE.items()),
                       mig=(("mem", "16G"), ("partition", None)))
GENERIC = ClusterProfile(
    "generic", tuple((size, replace(r, partition=None, constraint=None))
                     for size, r in RESOURCES_BY_SIZE.items()),
    mig=(("mem", "16G"),))
PRESETS: dict[str, ClusterProfile] = {"della": DELLA, "generic": GENERIC}


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
    environment: _Environment = Field(default_factory=_Environment)


def profile_choice(setting: str | None = None,
                   environ: Mapping[str, str] = os.environ) -> str:
    """The profile a deployment chose: its setting, else ``CK_CLUSTER_PROFILE``, else della."""
    return setting or environ.get(PROFILE_VARIABLE) or DEFAULT_PROFILE


def load_profile(choice: str) -> ClusterProfile:
    """A preset by name, or a profile file by path (refused with the field and fix)."""
    if choice in PRESETS:
        return PRESETS[choice]
    path = Path(choice).expanduser().resolve()
    if not path.is_file():
        raise CkError(f"cluster profile `{choice}` is neither a preset "
                      f"({', '.join(PRESETS)}) nor a file: set {PROFILE_VARIABLE} (or the "
                      "job_environment resource's cluster_profile) to one of them")
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
        raise CkError(f"{path}:{line}: {where}: {error['msg']} (see the profile format in "
                      "ck_dagster/slurm/profile.py)") from None
    base = PRESETS[spec.base]
    unknown = sorted(set(spec.sizes) - set(dict(base.sizes)))
    if unknown:
        raise CkError(f"{path}: sizes.{unknown[0]}: unknown model size (sizes: "
                      f"{', '.join(size for size, _ in base.sizes)})")
    defaults = _set(spec.defaults)
    sizes = tuple((size, base.request(size, defaults, _set(spec.sizes.get(size))))
                  for size, _ in base.sizes)
    mig = dict(base.mig)
    if spec.mig is not None:
        mig.update(spec.mig.model_dump(exclude_unset=True, exclude={"mig"}))
    return ClusterProfile(spec.name or path.stem, sizes, tuple(mig.items()),
                          tuple(spec.environment.modules), spec.environment.conda_env,
                          spec.environment.venv)


def _set(compute: Compute | None) -> dict[str, Any]:
    """The fields a profile section sets (``mig`` has no meaning there)."""
    return compute.model_dump(exclude_unset=True, exclude={"mig"}) if compute else {}
