"""Errors a user can act on: shown as a message, never as a traceback."""

from __future__ import annotations


class CkError(Exception):
    """An error caused by input or environment that the user can fix.

    The message says what is wrong, where (file, field) and how to fix it. Command-line entry
    points print it without a traceback; assets turn it into a Dagster ``Failure``.
    """
