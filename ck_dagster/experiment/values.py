"""Checks every value of an experiment file must pass, whatever field it is in.

Text goes into files ck_dagster writes (YAML configs, batch scripts, partition keys), numbers
into torchtune and SLURM: no control characters (a newline would split a line of those files),
only finite numbers, only the kinds of values a torchtune config can hold.
"""

from __future__ import annotations

import datetime as dt
import math
import unicodedata
from collections.abc import Iterator
from typing import Any

from ck_dagster.errors import CONTROL_CATEGORIES
from ck_dagster.experiment.problems import FieldPath, Problem

#: fields whose text may span lines (and hold tabs): prompts and free-text descriptions.
MULTILINE_FIELDS = frozenset(
    {"prompt", "system_prompt", "description", "question", "hypothesis", "purpose"}
)
#: the largest whole number any field takes (a 64-bit integer).
MAX_INT = 2**63 - 1
#: the one field a YAML date may be in.
DATE_FIELD: FieldPath = ("experiment", "date")


def control_characters(text: str, *, multiline: bool = False) -> list[str]:
    """The control characters (and Unicode line separators) in ``text``, as ``\\x1b``-style
    escapes; ``\\n`` and ``\\t`` are allowed when ``multiline``."""
    allowed = "\n\t" if multiline else ""
    found = {
        ch for ch in text if ch not in allowed and unicodedata.category(ch) in CONTROL_CATEGORIES
    }
    return sorted(ch.encode("unicode_escape").decode("ascii") for ch in found)


def value_problems(data: Any) -> list[Problem]:
    """A problem for every key or value no field may hold (lines are added by the caller)."""
    return list(_walk(data, ()))


def _walk(value: Any, path: FieldPath) -> Iterator[Problem]:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and control_characters(key):
                yield Problem(
                    path,
                    f"a key contains control characters ({', '.join(control_characters(key))})",
                    "remove them; keys are plain names",
                )
                continue
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*path, index))
    elif isinstance(value, str):
        multiline = bool(path) and str(path[-1]).rsplit(".", 1)[-1] in MULTILINE_FIELDS
        bad = control_characters(value, multiline=multiline)
        if bad:
            allowed = (
                "only prompts and descriptions may hold new lines and tabs; "
                if not multiline
                else ""
            )
            yield Problem(
                path,
                f"contains control characters ({', '.join(bad)})",
                f"remove them; {allowed}text goes into config files and job scripts",
            )
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        yield Problem(
            path,
            f"{len(str(abs(value)))}-digit number is too large",
            f"numbers here fit in 64 bits: at most {MAX_INT}",
        )
    elif isinstance(value, float) and not math.isfinite(value):
        yield Problem(path, f"`{value}` is not a finite number", "give a finite number")
    elif isinstance(value, (dt.date, dt.datetime)):
        if path != DATE_FIELD:
            yield Problem(
                path,
                f"`{value}` reads as a date, which a torchtune config cannot hold",
                "quote it to keep it as text",
            )
    elif not isinstance(value, (bool, int, float)) and value is not None:
        kind = "binary data" if isinstance(value, bytes) else f"a YAML {type(value).__name__}"
        yield Problem(
            path, f"holds {kind}", "use text, numbers, true/false, null, lists or mappings"
        )
