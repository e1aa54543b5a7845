"""Checks of a finetune.yaml as it is on disk: torchtune validation, keys a recipe ignores."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ck_dagster.finetune.catalog import RECIPES_ROOT
from ck_dagster.finetune.validate import component_errors

_CFG_KEY = re.compile(r"""\bcfg(?:\.get\(\s*["'](\w+)["']|\.(\w+)\b|\[\s*["'](\w+)["']\s*\])""")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DICTCONFIG_METHODS = {"get", "items", "keys", "values", "pop", "copy"}
#: recipe modules a recipe builds on, whose keys it reads too.
_RECIPE_IMPORT = re.compile(r"^from (ck_dagster\.training\.\w+) import|torchtune_recipe\(\"(\w+)\"\)",
                            re.M)


def validation_problems(config_file: Path, recipe: str) -> list[str]:
    """What torchtune's validation says of the file (empty when it passes)."""
    return [f"{node}: {message}" for node, _, message in component_errors(_load(config_file))]


def unknown_key_problems(config_file: Path, recipe: str) -> list[str]:
    """Top-level keys the recipe never reads: a typo there would be silently ignored."""
    keys = _load(config_file).keys()
    read = keys_read_by(recipe)
    return [f"`{key}` is not read by {recipe}" for key in keys if key not in read]


def _load(config_file: Path) -> dict[str, Any]:
    config = yaml.load(config_file.read_text(), Loader=_LOADER)
    if not isinstance(config, dict):
        raise ValueError(f"{config_file} is not a YAML mapping")
    return config


@cache
def keys_read_by(recipe: str) -> frozenset[str]:
    """The top-level config keys a recipe reads (``cfg.x``, ``cfg.get("x")``), with those of
    the torchtune and ck_dagster recipe modules it imports. ``recipe`` is what ``tune run``
    takes: a torchtune recipe name or a ``.py`` path naming a module; every key counts as read
    when the recipe's source cannot be found here (a user's recipe module)."""
    source_file = recipe_source(recipe)
    if source_file is None:
        return _EVERY_KEY
    source = source_file.read_text()
    found = {next(g for g in match.groups() if g) for match in _CFG_KEY.finditer(source)}
    for module, torchtune_name in _RECIPE_IMPORT.findall(source):
        found |= keys_read_by(torchtune_name or module.replace(".", "/") + ".py")
    return frozenset(found - _DICTCONFIG_METHODS)


def recipe_source(recipe: str) -> Path | None:
    """The source file of what ``tune run`` runs for ``recipe`` (None when not found)."""
    builtin = RECIPES_ROOT / f"{recipe}.py"
    if builtin.is_file():
        return builtin
    try:
        spec = importlib.util.find_spec(recipe.removesuffix(".py").replace("/", "."))
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


class _EveryKey(frozenset):  # type: ignore[type-arg]
    """Stands for "every key" when a recipe's source is out of reach."""

    def __contains__(self, key: object) -> bool:
        return True


_EVERY_KEY = _EveryKey()
