"""The training data on disk: a train/validation/test JSON file, or (as in v1) a folder of
parquet files whose names give the splits (``train.parquet``, ``validation.parquet``,
``test.parquet``, or shards such as ``train-00000-of-00002.parquet``).

Training, evaluation and the checks made when a file is read all see the data through here,
so a split is the same rows wherever it is read.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from ck_dagster.errors import CkError
from ck_dagster.fileio import sha256_file

#: the splits ck_dagster knows, in the order they are reported.
SPLITS = ("train", "validation", "test")
#: name, size and mtime of each file of the data.
Stamp = tuple[tuple[str, int, int], ...]
_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_]+?)(?:[-_.][0-9].*)?\.parquet$")


def is_parquet(path: Path) -> bool:
    """Whether ``path`` is parquet data (a folder of split files) rather than a JSON file."""
    return path.is_dir()


def parquet_splits(folder: Path) -> dict[str, list[Path]]:
    """The parquet files of each split in ``folder``, by the split their names give."""
    splits: dict[str, list[Path]] = {}
    for file in sorted(folder.glob("*.parquet")):
        match = _SHARD.match(file.name)
        if match:
            splits.setdefault(match["split"], []).append(file)
    return splits


class SplitNeed(NamedTuple):
    """A split some reader of the data needs rows in: who, and what else would do instead."""

    split: str
    reader: str
    instead: str = ""


#: the rows fine-tuning trains on.
TRAINING_NEEDS = SplitNeed("train", "fine-tuned runs train on it")
#: the rows the built-in evaluation task scores (a task with its own script reads its own).
EVALUATION_NEEDS = SplitNeed(
    "test", "the built-in evaluation task scores it", "give the task a `script`"
)


def missing_rows(path: Path, *needs: SplitNeed) -> list[tuple[str, str]]:
    """(message, fix) for each needed split the data at ``path`` has no rows in: the one check
    of empty splits, made when the experiment file, a run's own data file and an evaluation are
    read. CkError when the data cannot be read."""
    sizes = split_sizes(path)
    kind = "split" if is_parquet(path) else "list"
    where = f"data {'folder' if is_parquet(path) else 'file'} {path}"
    return [
        (
            f"{where} has no rows in a `{need.split}` {kind}, and {need.reader}",
            f"add a `{need.split}` {kind} of rows"
            + (f", or {need.instead}" if need.instead else ""),
        )
        for need in needs
        if not sizes.get(need.split)
    ]


def split_sizes(path: Path) -> dict[str, int]:
    """Rows in every split of the data (cached while its files are unchanged)."""
    return dict(_split_sizes(path, _stamp(path)))


def read_split(path: Path, split: str) -> list[dict[str, Any]]:
    """The rows of one split, as dicts (the built-in evaluation task reads them)."""
    if is_parquet(path):
        import pyarrow.parquet as pq

        files = parquet_splits(path).get(split)
        if not files:
            raise CkError(f"{path}: no `{split}` parquet file (name one {split}.parquet)")
        return [row for file in files for row in pq.read_table(file).to_pylist()]
    rows = _json(path).get(split)
    if not isinstance(rows, list):
        raise CkError(f"{path}: no `{split}` list of rows")
    return rows


def data_digest(path: Path) -> str:
    """SHA-256 of the data: of the file, or of a parquet folder's file names and contents."""
    return _digest(path, _stamp(path))


def _stamp(path: Path) -> Stamp:
    """Name, size and mtime of every file the data is made of (the caches' key)."""
    files = sorted(path.glob("*.parquet")) if is_parquet(path) else [path]
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


@lru_cache(maxsize=64)
def _split_sizes(path: Path, stamp: Stamp) -> tuple[tuple[str, int], ...]:
    if is_parquet(path):
        import pyarrow.parquet as pq

        return tuple(
            (split, sum(pq.ParquetFile(f).metadata.num_rows for f in files))
            for split, files in parquet_splits(path).items()
        )
    return tuple(
        (split, len(rows)) for split, rows in _json(path).items() if isinstance(rows, list)
    )


@lru_cache(maxsize=64)
def _digest(path: Path, stamp: Stamp) -> str:
    if not is_parquet(path):
        return sha256_file(path)
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(f"{Path(name).name}\0{sha256_file(Path(name))}\n".encode())
    return digest.hexdigest()


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CkError(f"{path}: not a JSON object of train/validation/test lists ({exc})") from None
    if not isinstance(data, dict):
        raise CkError(f"{path}: not a JSON object of train/validation/test lists")
    return data
