"""Problems found in an experiment file, reported all at once with file, line, field and fix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ck_dagster.errors import CkError, printable

#: the most problems a message lists (all are kept in ``ExperimentFileError.problems``).
MAX_SHOWN = 100

#: a field path inside the experiment file, e.g. ("runs", 1, "parameters", "lora_rank").
FieldPath = tuple[str | int, ...]


def format_path(path: FieldPath) -> str:
    """``("runs", 1, "name")`` -> ``runs[1].name``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an experiment file."""

    path: FieldPath
    message: str
    fix: str | None = None
    line: int | None = None

    def render(self, file: Path | str) -> str:
        """``file:line: field: message; fix`` (the form editors and terminals link)."""
        where = f"{file}:{self.line}" if self.line else str(file)
        text = f"{where}: {format_path(self.path)}: {self.message}"
        return printable(f"{text} ({self.fix})" if self.fix else text)


class ExperimentFileError(CkError):
    """An experiment file was refused; every problem in it is listed."""

    def __init__(self, file: Path | str, problems: Sequence[Problem]):
        self.file = Path(file)
        self.problems = _in_file_order(problems)
        count = len(self.problems)
        header = (
            f"{self.file}: {count} problem{'s' if count != 1 else ''}; "
            "nothing was registered or written"
        )
        shown = ["  " + p.render(self.file) for p in self.problems[:MAX_SHOWN]]
        if count > MAX_SHOWN:
            shown.append(f"  ... and {count - MAX_SHOWN} more problems")
        super().__init__("\n".join([printable(header), *shown]))


def _in_file_order(problems: Iterable[Problem]) -> list[Problem]:
    """Each problem once, in the order of the file's lines (problems without a line first)."""
    seen: set[tuple[FieldPath, str]] = set()
    kept = []
    for problem in problems:
        if (problem.path, problem.message) not in seen:
            seen.add((problem.path, problem.message))
            kept.append(problem)
    return sorted(kept, key=lambda p: p.line or 0)
