"""SLURM resources for a job, and what each model size needs under the della rules (the
``della`` cluster profile; ``ck_dagster.slurm.profile`` applies profiles and ``compute:``)."""

from __future__ import annotations

from dataclasses import dataclass


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


# The v1 rule (RAM = VRAM), by model size class; see docs in experiment-schema.md.
RESOURCES_BY_SIZE: dict[str, Resources] = {
    "tiny": Resources(mem="4G", cpus=1, gpus=0, time="0:30:00"),
    "1B": Resources(mem="40G", cpus=4, gpus=1, partition="nomig"),
    "3B": Resources(mem="80G", cpus=4, gpus=1, constraint="gpu80"),
    "8B": Resources(mem="80G", cpus=8, gpus=1, constraint="gpu80"),
    "70B": Resources(mem="320G", cpus=8, gpus=4, constraint="gpu80"),
}
