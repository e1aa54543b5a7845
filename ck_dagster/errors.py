"""Errors a user can act on: shown as a message, never as a traceback; and the one
"did you mean" hint every unknown name gets."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
