"""Registration summaries stay one readable line per kind of change, however many runs."""

from __future__ import annotations

import pytest

from ck_dagster.assets.registry import name_list

pytestmark = pytest.mark.unit


def test_long_lists_are_summarized() -> None:
    keys = [f"sweep/r{i:04d}" for i in range(0, 1000, 4)]
    text = name_list(keys)
    assert text.startswith("sweep/r0000, sweep/r0004, ")
    assert text.endswith(", ... and 240 more")
    assert text.count("sweep/") == 10


def test_short_lists_are_written_out() -> None:
    assert name_list(["a/x", "a/y"]) == "a/x, a/y"
    assert name_list([f"k{i}" for i in range(10)]).count("k") == 10
