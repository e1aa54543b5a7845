"""Checks of a finetune.yaml as it is on disk: torchtune validation, keys a recipe ignores."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

from ck_dagster.finetune.catalog import RECIPES_ROOT
from ck_dagster.finetune.validate import component_errors

_CFG_KEY = re.compile(r"""\bcfg(?:\.get\(\s*["'](\w+)["']|\.(\w+)\b|\[\s*["'](\w+)["']\s*\])""")
_DICTCONFIG_METHODS = {"get", "items", "keys", "values", "pop", "copy"}


def validation_problems(config_file: Path, recipe: str) -> list[str]:
    """What torchtune's validation says of the file (empty when it passes)."""
    config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
    assert isinstance(config, dict)
    return [f"{node}: {message}" for node, _, message in component_errors(config)]


def unknown_key_problems(config_file: Path, recipe: str) -> list[str]:
    """Top-level keys the recipe never reads: a typo there would be silently ignored."""
    keys = OmegaConf.load(config_file).keys()
    read = keys_read_by(recipe)
    return [f"`{key}` is not read by {recipe}" for key in keys if key not in read]


@cache
def keys_read_by(recipe: str) -> frozenset[str]:
    """The top-level config keys a torchtune recipe reads (``cfg.x``, ``cfg.get("x")``)."""
    source = (RECIPES_ROOT / f"{recipe}.py").read_text()
    found = {next(g for g in match.groups() if g) for match in _CFG_KEY.finditer(source)}
    return frozenset(found - _DICTCONFIG_METHODS)
