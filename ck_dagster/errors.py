"""Errors a user can act on: shown as a message, never as a traceback; the one "did you mean"
hint every unknown name gets; and the one way a long list of names is shortened."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable

#: Unicode categories of characters that must never reach a file or terminal as they are:
#: control characters and the line and paragraph separators.
CONTROL_CATEGORIES = ("Cc", "Zl", "Zp")


class CkError(Exception):
    """An error caused by input or environment that the user can fix.

    The message says what is wrong, where (file, field) and how to fix it. Command-line entry
    points print it without a traceback; assets turn it into a Dagster ``Failure``.
    """


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A "did you mean `x`?" hint naming the closest candidates, or None."""
    close = difflib.get_close_matches(word, list(dict.fromkeys(candidates)), n=3, cutoff=0.6)
    if not close:
        return None
    return "did you mean " + " or ".join(f"`{c}`" for c in close) + "?"


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``), so a message quoting a hostile
    value cannot move the cursor, clear the screen or split a line of a terminal or log."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in CONTROL_CATEGORIES
        else ch
        for ch in text
    )


def name_list(names: list[str], shown: int = 10) -> str:
    """``a, b, c``; past ``shown`` names, ``a, b, ... and 240 more`` (a 1000-run sweep's edit
    stays one readable line)."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])}, ... and {len(names) - shown} more"
