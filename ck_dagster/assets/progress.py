"""A training job's progress on its run's partition in the UI: observations of ``checkpoint``.

While the step follows a job, each progress-bar line the job logs is parsed (epoch, step, loss)
and, at most once per partition every ``every`` seconds, recorded as an ``AssetObservation`` of
the asset's partition: the partition's page and ``ck-dagster status`` show where the job is.
"""

from __future__ import annotations

import time

from dagster import AssetExecutionContext, AssetObservation, MetadataValue

from ck_dagster.training.progress import progress_of

#: the metadata key of the progress line ("epoch 2, step 20, loss 0.7462").
PROGRESS = "progress"


class ProgressObservations:
    """``on_log(key, line)`` for a job runner: progress lines become throttled observations."""

    def __init__(self, context: AssetExecutionContext, every: float = 10.0) -> None:
        self.context = context
        self.every = every
        self._last: dict[str, float] = {}

    def __call__(self, key: str, line: str) -> None:
        progress = progress_of(line)
        now = time.monotonic()
        if progress is None or now - self._last.get(key, -self.every) < self.every:
            return
        self._last[key] = now
        self.context.log_event(
            AssetObservation(
                asset_key=self.context.asset_key,
                partition=key,
                description=f"training: {progress}",
                metadata={
                    PROGRESS: str(progress),
                    "epoch": progress.epoch,
                    "step": progress.step,
                    "loss": progress.loss,
                    "updated": MetadataValue.timestamp(time.time()),
                },
            )
        )
