"""README claims that are output: the refused-file example is what ``ck-dagster`` prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ck_dagster import cli

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def console_block(command: str) -> str:
    """The output the README shows under ``$ command`` in a console block."""
    readme = (REPO / "README.md").read_text()
    found = re.search(rf"```console\n\$ {re.escape(command)}\n(.*?)```", readme, re.S)
    assert found, f"README has no console block for `{command}`"
    return found.group(1)


def test_the_refused_file_example_is_what_dry_run_prints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    assert cli.main(["dry-run", "examples/bad.yaml", "--out", "dry-run/never"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == console_block("ck-dagster dry-run examples/bad.yaml")
    assert not (REPO / "dry-run" / "never").exists()
