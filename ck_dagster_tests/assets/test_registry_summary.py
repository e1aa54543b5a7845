"""Registration summaries and preflight warnings stay one readable line per kind of change
or refusal, however many runs."""

from __future__ import annotations

import pytest

from ck_dagster.errors import name_list

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


def test_refusals_are_one_line_per_request_and_reason() -> None:
    """1000 runs the cluster could never run, for one reason, make one warning line."""
    from ck_dagster.slurm.preflight import Refusal, summarize

    refusals = [Refusal(f"s/r{i:03d}", "partition=nomig", "no such partition") for i in range(1000)]
    refusals.append(Refusal("s/big", "mem=9000G", "SLURM refuses it"))
    lines = summarize(refusals)
    assert lines == [
        "runs `s/r000`, `s/r001`, `s/r002`, `s/r003`, `s/r004`, `s/r005`, `s/r006`, `s/r007`, "
        "`s/r008`, `s/r009`, ... and 990 more (partition=nomig): no such partition",
        "run `s/big` (mem=9000G): SLURM refuses it",
    ]
