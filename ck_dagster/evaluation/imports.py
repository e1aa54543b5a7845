"""The local modules a task script imports: files whose edits change what the script scores.

Static analysis with ``ast`` (nothing is imported or run): every ``import`` and ``from ...
import`` of the script, and of the local modules it finds, recursively, resolved against the
given folders only (the script's folder and the experiment's). Installed packages are not
followed: their versions are the deployment's, not the experiment's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from pathlib import Path


def local_imports(script: Path, roots: Sequence[Path]) -> list[Path]:
    """Every file under ``roots`` that ``script`` imports, directly or through another such
    file, sorted; a file that does not parse contributes no imports (its content still counts)."""
    roots = [root.resolve() for root in roots]
    found: set[Path] = set()
    pending = [script.resolve()]
    while pending:
        current = pending.pop()
        for module in _imported_files(current, roots):
            if (
                module not in found
                and module != script.resolve()
                and any(module.is_relative_to(root) for root in roots)
            ):
                found.add(module)
                pending.append(module)
    return sorted(found)


def _imported_files(file: Path, roots: list[Path]) -> Iterator[Path]:
    """The files under ``roots`` that the import statements of ``file`` can name."""
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (OSError, SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _module_files(alias.name.split("."), roots)
        elif isinstance(node, ast.ImportFrom):
            parts = node.module.split(".") if node.module else []
            bases = (
                [file.parent.parents[node.level - 2] if node.level > 1 else file.parent]
                if node.level
                else roots
            )
            for alias in node.names:
                yield from _module_files(parts + [alias.name], bases)
            if parts:
                yield from _module_files(parts, bases)


def _module_files(parts: list[str], roots: Sequence[Path]) -> Iterator[Path]:
    """The files of module ``parts`` (and its packages' ``__init__.py``) in any of ``roots``."""
    for root in roots:
        for depth in range(1, len(parts) + 1):
            base = root.joinpath(*parts[:depth])
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    yield candidate.resolve()
