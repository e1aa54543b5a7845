"""Fixtures for evaluation tests: tiny experiments in a test's folder, and checkpoints that the
real ``tune run`` trained once per session from the ``finetune.yaml`` a RunPlan writes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ck_dagster.finetune.plan import RunPlan
from ck_dagster_tests.evaluation.tiny_experiment import EPOCHS, plan_run, train, write_experiment


@pytest.fixture(scope="session")
def trained_artifacts(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, capitalization_data: Path
) -> Path:
    """The ``artifacts`` folder of run ``tuned``, trained by ``tune run`` (read-only)."""
    plan = plan_run(
        write_experiment(tmp_path_factory.mktemp("trained"), tiny_model_dir, capitalization_data),
        "tuned",
    )
    seconds = train(plan)
    print(f"trained {plan.partition_key} ({EPOCHS} epochs, {plan.recipe}) in {seconds:.1f} s")
    return plan.artifacts_dir


@pytest.fixture
def experiment(
    tmp_path: Path, tiny_model_dir: Path, capitalization_data: Path
) -> Callable[..., Path]:
    """Write a tiny experiment in this test's folder (arguments as ``write_experiment``)."""

    def write(**kwargs: Any) -> Path:
        return write_experiment(
            tmp_path, **{"model_dir": tiny_model_dir, "data": capitalization_data, **kwargs}
        )

    return write


@pytest.fixture
def trained_plan(experiment: Callable[..., Path], trained_artifacts: Path) -> RunPlan:
    """The plan of run ``tuned`` in this test's folder, with the session's epochs copied in."""
    plan = plan_run(experiment(), "tuned")
    for epoch in range(EPOCHS):
        shutil.copytree(trained_artifacts / f"epoch_{epoch}", plan.artifacts_dir / f"epoch_{epoch}")
    return plan
