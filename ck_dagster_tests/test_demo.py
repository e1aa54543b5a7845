"""`make demo` as a newcomer runs it: a fresh clone, a fresh venv, a real report."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from ck_dagster_tests.fixtures.dagster import REPO


def make_demo(clone: Path) -> str:
    # a make running this test must not hand its variables (VENV=...) to the clone's make
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(
        ["make", "demo"], cwd=clone, capture_output=True, text=True, timeout=1500, env=env
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_make_demo_from_a_fresh_clone(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The tiny model the suite made is in the cache: the clone's demo copies it (the same
    function makes it on a machine without one)."""
    clone = tmp_path / "ck_dagster"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    first = make_demo(clone)
    assert f"the tiny model: made on this machine before, copied from {tiny_model_dir}" in first
    assert "== training and evaluating 4 runs (local launcher) ==" in first
    assert first.count("submitted job") == 7  # 3 trainings, 4 evaluations
    assert "ck-dagster ui   (or: make ui)" in first

    report = clone / "demo" / "runs" / "tiny_capitalization" / "report"
    rows = list(csv.DictReader((report / "report.csv").open()))
    match = {(r["run"], r["epoch"]): float(r["score"]) for r in rows if r["metric"] == "match"}
    assert match[("base", "base")] == 0.0
    assert max(match[(run, "epoch_5")] for run in ("lr1e-3", "lr2e-3", "lr4e-3")) > 0.3
    assert (report / "scores.png").stat().st_size > 10_000

    # again: everything is reused, nothing is trained or evaluated twice
    second = make_demo(clone)
    assert "submitted job" not in second
    assert second.count("adopted, no job submitted") == 7
    assert list(csv.DictReader((report / "report.csv").open())) == rows
