"""The metric logger of runs with ``output.wandb_project``: torchtune's DiskLogger (the loss
curve ck_dagster reads back) and its WandBLogger (Weights & Biases), side by side.

Jobs export ``WANDB_MODE=offline`` (compute nodes often have no internet), so WandBLogger
writes an offline run folder under ``<output_dir>/wandb/`` that ``wandb sync`` uploads later.
"""

from __future__ import annotations

from typing import Any

from torchtune.training.metric_logging import DiskLogger, MetricLoggerInterface, WandBLogger


class DiskAndWandBLogger(MetricLoggerInterface):
    """Every metric to DiskLogger (``log_dir``) and to WandBLogger (``project``, run ``name``)."""

    def __init__(
        self, log_dir: str, project: str, name: str, wandb_dir: str, **wandb_kwargs: Any
    ) -> None:
        self._loggers: list[MetricLoggerInterface] = [
            DiskLogger(log_dir=log_dir),
            WandBLogger(project=project, name=name, log_dir=wandb_dir, **wandb_kwargs),
        ]

    def log(self, name: str, data: Any, step: int) -> None:
        """Log one scalar to both loggers."""
        for logger in self._loggers:
            logger.log(name, data, step)

    def log_dict(self, payload: Any, step: int) -> None:
        """Log several scalars to both loggers."""
        for logger in self._loggers:
            logger.log_dict(payload, step)

    def log_config(self, config: Any) -> None:
        """Record the run's config (W&B keeps it with the run)."""
        for logger in self._loggers:
            logger.log_config(config)

    def close(self) -> None:
        """Flush and close both loggers."""
        for logger in self._loggers:
            logger.close()
