"""Cluster profiles: a site's SLURM policy as data, chosen per deployment.

A profile says what each model size asks for (partition, constraint, GRES, memory, CPUs), the
MIG rule, the default account, QoS and time, the longest time a job may ask for (``max_time``:
how far a job that ran out of time is given more when it resumes), and how jobs activate their
software (modules, conda, venv: what cruijff_kit v1 kept in ``claude.local.md``). Two presets
ship (neither with a ``max_time``):

- ``della``: v1's rules (1B on ``nomig``, larger models with ``--constraint=gpu80``, MIG: 16G
  and no partition);
- ``generic``: the same sizes without partition or constraint: the cluster's defaults.

A site's profile is a YAML file that starts from a preset and overrides it (its format is in
``ck_dagster.finetune.cluster_profile``, which reads it).

Choose it with the ``job_environment`` resource's ``cluster_profile`` or ``CK_CLUSTER_PROFILE``
(``della``, ``generic`` or a path); ``della`` when neither is set.
SLURM requests follow: model size -> profile -> experiment ``compute:`` -> ``runs[].compute``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ck_dagster.slurm.resources import RESOURCES_BY_SIZE, Resources

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
    #: the longest ``--time`` a job may ask for here: a job that ran out of time is resumed
    #: with twice its time, up to this; None: resumed with the same time.
    max_time: str | None = None

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


DELLA = ClusterProfile(
    "della", tuple(RESOURCES_BY_SIZE.items()), mig=(("mem", "16G"), ("partition", None))
)
GENERIC = ClusterProfile(
    "generic",
    tuple(
        (size, replace(r, partition=None, constraint=None)) for size, r in RESOURCES_BY_SIZE.items()
    ),
    mig=(("mem", "16G"),),
)
PRESETS: dict[str, ClusterProfile] = {"della": DELLA, "generic": GENERIC}
