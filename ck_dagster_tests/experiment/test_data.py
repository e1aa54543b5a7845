"""Training data on disk: JSON, or v1's folder of parquet files named after their splits; both
read the same rows, so training and evaluation see one dataset whatever its format."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ck_dagster.evaluation.tasks import input_output
from ck_dagster.experiment.data import data_digest, parquet_splits, read_split, split_sizes
from ck_dagster.experiment.problems import ExperimentFileError
from ck_dagster.finetune.plan import plan_experiment_file
from ck_dagster_tests.fixtures.experiments import write_parquet_data, write_v1_experiment

PARQUET = {'format: "json"': 'format: "parquet"'}


def test_parquet_splits_hold_the_same_rows_as_the_json(
    capitalization_data: Path, tmp_path: Path
) -> None:
    folder = write_parquet_data(capitalization_data, tmp_path / "words")
    rows = json.loads(capitalization_data.read_text())
    assert (
        split_sizes(folder)
        == split_sizes(capitalization_data)
        == {split: len(split_rows) for split, split_rows in rows.items()}
    )
    for split in ("train", "validation", "test"):
        assert read_split(folder, split) == read_split(capitalization_data, split) == rows[split]
    # the built-in evaluation task builds the same samples from either
    prompt = "Capitalize the given word: {input}\n"
    samples = [
        [
            ([(m.role, m.text) for m in s.input], s.target)
            for s in input_output(str(data), prompt, "Be brief.").dataset
        ]
        for data in (folder, capitalization_data)
    ]
    assert samples[0] == samples[1] and len(samples[0]) == len(rows["test"])


def test_shards_are_one_split_and_any_change_changes_the_digest(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for name, words in (
        ("train-00000-of-00002", ["a", "b"]),
        ("train-00001-of-00002", ["c"]),
        ("test", ["d"]),
    ):
        pq.write_table(
            pa.Table.from_pylist([{"input": w, "output": w.upper()} for w in words]),
            folder / f"{name}.parquet",
        )
    assert {s: len(f) for s, f in parquet_splits(folder).items()} == {"train": 2, "test": 1}
    assert split_sizes(folder) == {"train": 3, "test": 1}
    before = data_digest(folder)
    pq.write_table(pa.Table.from_pylist([{"input": "e", "output": "E"}]), folder / "test.parquet")
    assert data_digest(folder) != before


def test_a_parquet_experiment_trains_on_the_train_files(
    tmp_path: Path, tiny_model_dir: Path, capitalization_data: Path
) -> None:
    folder = write_parquet_data(capitalization_data, tmp_path / "words")
    file = write_v1_experiment(tmp_path, tiny_model_dir, folder, replace=PARQUET)
    config = plan_experiment_file(file).runs["tiny-llama_rank4"].config
    assert config.get("dataset.source") == "parquet"
    assert config.get("dataset.data_files") == [str(folder / "train.parquet")]
    assert config.get("dataset.field") is None


@pytest.mark.parametrize(
    ("parquet", "expected"),
    [
        (
            False,
            "is a folder, not a file (point it at the JSON file with "
            "train/validation/test splits, or set `format: parquet`",
        ),
        (True, "is not a folder of parquet files"),
    ],
)
def test_the_format_must_match_the_data(
    tmp_path: Path, tiny_model_dir: Path, capitalization_data: Path, parquet: bool, expected: str
) -> None:
    data = (
        capitalization_data
        if parquet
        else write_parquet_data(capitalization_data, tmp_path / "words")
    )
    file = write_v1_experiment(tmp_path, tiny_model_dir, data, replace=PARQUET if parquet else {})
    with pytest.raises(ExperimentFileError) as caught:
        plan_experiment_file(file)
    assert expected in str(caught.value)
