"""Layered config merging that remembers where every value came from.

Layers apply in order (recipe -> derived -> controls -> run -> derived). Scalars and lists
replace, mappings merge recursively, dotted keys (``optimizer.lr``) address nested values.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ck_dagster.experiment.problems import FieldPath

SourceKind = Literal["recipe", "derived", "controls", "run"]


@dataclass(frozen=True)
class Source:
    """Where a config value came from: its layer, a human-readable origin, the file field."""

    kind: SourceKind
    origin: str
    field: FieldPath | None = None


class ProvenancedConfig:
    """A nested config mapping plus the source of every leaf (keyed by dotted path)."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.sources: dict[str, Source] = {}

    def merge(self, values: Mapping[str, Any], source: Source) -> None:
        """Merge a whole layer (keys may be dotted) whose values share one source."""
        for key, value in values.items():
            self.set(key, value, source)

    def set(self, path: str, value: Any, source: Source) -> None:
        """Set the value at dotted ``path``: mappings merge into mappings, all else replaces."""
        parts = path.split(".")
        node = self.config
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                self._forget(".".join(parts[: depth + 1]))
                child = node[part] = {}
            node = child
        last = parts[-1]
        if isinstance(value, Mapping) and value and isinstance(node.get(last), dict):
            for key, item in value.items():
                self.set(f"{path}.{key}", item, source)
            return
        self._forget(path)
        node[last] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)
        for leaf_path, _ in config_leaves(node[last], path):
            self.sources[leaf_path] = source

    def get(self, path: str, default: Any = None) -> Any:
        """The value at dotted ``path``, or ``default``."""
        node: Any = self.config
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def leaves(self) -> Iterator[tuple[str, Any, Source]]:
        """Every leaf as (dotted path, value, source), in config order."""
        for path, value in config_leaves(self.config):
            yield path, value, self.sources[path]

    def remove(self, key: str) -> None:
        """Drop a top-level key and the sources of its leaves."""
        self.config.pop(key, None)
        self._forget(key)

    def _forget(self, path: str) -> None:
        prefix = path + "."
        for key in [k for k in self.sources if k == path or k.startswith(prefix)]:
            del self.sources[key]


def config_leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a nested config as (dotted path, value)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from config_leaves(item, f"{path}.{key}" if path else key)
    else:
        yield path, value
