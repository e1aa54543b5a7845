"""The training data file, read as training will read it: bounded, and every fault a problem.

``register`` and ``dry-run`` both read it (through the experiment file's checks), so a file
that training would refuse is refused before anything is written.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ck_dagster.fileio import UnreadableFile, read_bounded, regular_file_reason

#: the largest data file read; larger ones are refused with this figure.
MAX_DATA_BYTES = 256_000_000
#: the splits a data file may have; ``train`` is required.
SPLITS = ("train", "validation", "test")
_FIX = "point it at a JSON object of train/validation/test lists of {input, output} rows"


def data_file_problems(path: Path, input_key: str, output_key: str) -> list[tuple[str, str]]:
    """(message, fix) for everything wrong with a data file; empty when training can read it."""
    reason = regular_file_reason(path)
    if reason:
        return [(f"data file {path} {reason}", _FIX)]
    stat = path.stat()
    return list(_problems(path, stat.st_size, stat.st_mtime_ns, input_key, output_key))


@lru_cache(maxsize=16)
def _problems(
    path: Path, size: int, mtime_ns: int, input_key: str, output_key: str
) -> tuple[tuple[str, str], ...]:
    """Cached while the file keeps its size and mtime: registering re-reads only what changed."""
    try:
        data = json.loads(read_bounded(path, MAX_DATA_BYTES).decode("utf-8"))
    except UnreadableFile as exc:
        return ((f"data file {path} {exc}", _FIX),)
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        return ((f"data file {path}:{line}: not UTF-8 text", "save it as UTF-8"),)
    except json.JSONDecodeError as exc:
        return (
            (
                f"data file {path}:{exc.lineno}: not valid JSON: {exc.msg}",
                "fix the JSON at that line",
            ),
        )
    except RecursionError:
        return ((f"data file {path}: nested too deeply to read", _FIX),)
    if not isinstance(data, dict):
        return (
            (f"data file {path} holds a JSON {type(data).__name__}, not an object of splits", _FIX),
        )
    found = []
    for split in SPLITS:
        problem = _split_problem(data.get(split, []), split, input_key, output_key)
        if problem:
            found.append((f"data file {path}: {problem}", _FIX))
    return tuple(found)


def _split_problem(rows: Any, split: str, input_key: str, output_key: str) -> str | None:
    if not isinstance(rows, list):
        return f"`{split}` is a JSON {type(rows).__name__}, not a list of rows"
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"`{split}[{index}]` is a JSON {type(row).__name__}, not an object"
        for key in (input_key, output_key):
            value = row.get(key)
            if value is None or isinstance(value, (dict, list)):
                what = "has no" if value is None else "has a nested value in"
                return (
                    f"`{split}[{index}]` {what} `{key}` (rows need `{input_key}` and "
                    f"`{output_key}` text)"
                )
    return None
