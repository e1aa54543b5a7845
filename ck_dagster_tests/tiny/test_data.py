"""The capitalization data set: disjoint splits of made-up words, reproducible from a seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ck_dagster.tiny.data import make_capitalization_dataset

pytestmark = pytest.mark.unit


def test_splits_have_the_sizes_asked_and_share_no_word(tmp_path: Path) -> None:
    path = make_capitalization_dataset(
        tmp_path / "cap.json", n_train=300, n_validation=20, n_test=40, seed=3
    )
    data = json.loads(path.read_text())

    assert {name: len(rows) for name, rows in data.items()} == {
        "train": 300,
        "validation": 20,
        "test": 40,
    }
    words = {name: {row["input"] for row in rows} for name, rows in data.items()}
    assert sum(len(w) for w in words.values()) == 360
    assert all(
        row["input"].isalpha()
        and row["input"].islower()
        and row["output"] == row["input"][0].upper() + row["input"][1:]
        for rows in data.values()
        for row in rows
    )
    # every letter of the alphabet starts some training word, so the test split is fair.
    assert {w[0] for w in words["train"]} == set("abcdefghijklmnopqrstuvwxyz")


def test_same_seed_same_file_other_seed_other_words(tmp_path: Path) -> None:
    first = make_capitalization_dataset(tmp_path / "a.json", seed=1).read_bytes()
    again = make_capitalization_dataset(tmp_path / "b.json", seed=1).read_bytes()
    other = make_capitalization_dataset(tmp_path / "c.json", seed=2).read_bytes()
    assert first == again
    assert first != other
