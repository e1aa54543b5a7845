"""The one partitions definition: every run of every registered experiment, ``EXPERIMENT/RUN``."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

runs_partitions = DynamicPartitionsDefinition(name="runs")


def split_key(partition_key: str) -> tuple[str, str]:
    """``"cap_sweep/rank4"`` -> ``("cap_sweep", "rank4")``."""
    experiment, _, run = partition_key.partition("/")
    return experiment, run

