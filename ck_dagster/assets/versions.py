"""Code versions from source: an asset is stale in Dagster when the code that builds it changed."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def code_version(*modules: str) -> str:
    """A short hash of the source files of the given modules (a package: all its files)."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ImportError(f"no module named {name}")
        origin = Path(spec.origin)
        files = (
            sorted(p for p in origin.parent.rglob("*") if p.suffix in (".py", ".yaml"))
            if spec.submodule_search_locations
            else [origin]
        )
        for file in files:
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]
