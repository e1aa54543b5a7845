"""The partitions: every run of every registered experiment (``EXPERIMENT/RUN``), and every
registered experiment (``EXPERIMENT``, the report's)."""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

runs_partitions = DynamicPartitionsDefinition(name="runs")
#: one per experiment name; registering adds the name along with its runs.
experiments_partitions = DynamicPartitionsDefinition(name="experiments")


def split_key(partition_key: str) -> tuple[str, str]:
    """``"cap_sweep/rank4"`` -> ``("cap_sweep", "rank4")``."""
    experiment, _, run = partition_key.partition("/")
    return experiment, run


def experiment_keys(partition_keys: list[str] | tuple[str, ...], experiment: str) -> list[str]:
    """The keys among ``partition_keys`` that belong to ``experiment``."""
    return [key for key in partition_keys if split_key(key)[0] == experiment]
