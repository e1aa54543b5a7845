"""Shared pytest configuration: fixtures live in ck_dagster_tests/fixtures/, one module each.

Nothing here (nor in the fixture modules at import) imports torch, torchtune or Dagster: the
fixtures import what they need when a test asks for them, so collecting the suite, and running
the ``unit`` tier, stays fast. A test marked ``unit`` is held to that tier's promise: it starts
no process and asks for none of the fixtures that build a model or need the cluster.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

# Claims on runs (Fischer's timed mutual exclusion) wait 0.5 s instead of 2 s before reading
# back, in every process the tests start: still far longer than a write to the test instance,
# and a smaller margin makes the tests of two processes at once harder to pass, not easier.
os.environ.setdefault("CK_CLAIM_SETTLE_S", "0.5")

pytest_plugins: list[str] = [
    "pytester",  # test_conftest.py runs the unit-tier guard in a pytest of its own
    "ck_dagster_tests.fixtures.dagster",
    "ck_dagster_tests.fixtures.slurm",
    "ck_dagster_tests.fixtures.postgres",  # after slurm: it imports slurm's skip-or-fail helper
    "ck_dagster_tests.fixtures.tiny_model",
]

#: fixtures that build a model, train, or need SLURM: never in a ``unit`` test.
HEAVY_FIXTURES = frozenset(
    {
        "tiny_model_dir",
        "capitalization_data",
        "slurm_cluster",
        "trained_artifacts",
        "trained_plan",
        "experiment",
    }
)


@pytest.fixture(autouse=True)
def _unit_tests_stay_pure(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail a ``unit`` test that asks for a heavy fixture or starts a process."""
    if request.node.get_closest_marker("unit") is None:
        return
    heavy = sorted(HEAVY_FIXTURES & set(request.fixturenames))
    if heavy:
        pytest.fail(
            f"a unit test may not use {', '.join(heavy)}: mark it slow or drop `unit`",
            pytrace=False,
        )

    popen = subprocess.Popen.__init__

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        if isinstance(args, list) and args[:1] == ["fc-list"]:
            # matplotlib lists the system fonts once, when it first builds its font cache
            return popen(self, args, *rest, **kwargs)
        raise AssertionError(
            f"a unit test started a process ({args!r}): inject a runner, or drop the `unit` marker"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
