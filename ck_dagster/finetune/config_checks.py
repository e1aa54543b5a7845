"""Checks of a finetune.yaml as it is on disk: torchtune validation, keys a recipe ignores."""

from __future__ import annotations

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
    """The top-level config keys a torchtune recipe reads (``cfg.x``, ``cfg.get("x")``)."""
    source = (RECIPES_ROOT / f"{recipe}.py").read_text()
    found = {next(g for g in match.groups() if g) for match in _CFG_KEY.finditer(source)}
    return frozenset(found - _DICTCONFIG_METHODS)
