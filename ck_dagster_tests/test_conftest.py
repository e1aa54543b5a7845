"""The ``unit`` tier keeps its promise: the root conftest fails a unit test that starts a
process or asks for the model, and leaves other tests alone (run in an inline pytest)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

CONFTEST = """
import pytest
from ck_dagster_tests.conftest import _unit_tests_stay_pure  # noqa: F401


@pytest.fixture
def tiny_model_dir(tmp_path):
    return tmp_path
"""

TESTS = """
import subprocess
import pytest


@pytest.mark.unit
def test_unit_starting_a_process():
    subprocess.run(["true"], check=True)


@pytest.mark.unit
def test_unit_asking_for_the_model(tiny_model_dir):
    pass


@pytest.mark.unit
def test_unit_that_is_pure():
    assert sum([1, 2]) == 3


def test_other_tests_may_start_processes():
    assert subprocess.run(["true"]).returncode == 0
"""


def test_the_guard_fails_impure_unit_tests_only(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    unit: pure\n")
    pytester.makepyfile(test_tiers=TESTS)
    result = pytester.runpytest_inprocess("-m", "unit", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=1, deselected=1)
    result.stdout.fnmatch_lines(
        ["*a unit test may not use tiny_model_dir*", "*a unit test started a process*true*"]
    )
