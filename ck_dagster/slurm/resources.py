"""SLURM resources for a job: what a model size needs, and how ``runs[].compute`` overrides it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Resources:
    """What one job asks SLURM for. ``None`` means "leave it to the cluster's default"."""

    mem: str
    cpus: int
    gpus: int
    time: str = "1:00:00"
    partition: str | None = None
    constraint: str | None = None
    account: str | None = None
    qos: str | None = None

    def with_overrides(self, compute: dict[str, Any]) -> Resources:
        """Apply ``runs[].compute`` (already validated) on top of these resources.

        ``mig: true`` (a 1B model on a MIG slice) means 16G and no partition, as in v1.
        """
        fields = {k: v for k, v in compute.items() if k != "mig" and v is not None}
        result = self
        if compute.get("mig"):
            result = replace(result, mem="16G", partition=None)
        return replace(result, **fields)


# The v1 rule (RAM = VRAM), by model size class; see docs in experiment-schema.md.
RESOURCES_BY_SIZE: dict[str, Resources] = {
    "tiny": Resources(mem="4G", cpus=1, gpus=0, time="0:30:00"),
    "1B": Resources(mem="40G", cpus=4, gpus=1, partition="nomig"),
    "3B": Resources(mem="80G", cpus=4, gpus=1, constraint="gpu80"),
    "8B": Resources(mem="80G", cpus=8, gpus=1, constraint="gpu80"),
    "70B": Resources(mem="320G", cpus=8, gpus=4, constraint="gpu80"),
}
