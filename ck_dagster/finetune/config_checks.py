"""Checks of a finetune.yaml as it is on disk: torchtune validation, keys a recipe ignores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ck_dagster.finetune.torchtune_internals import keys_read_by
from ck_dagster.finetune.validate import component_errors, save_results

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def validation_problems(config_file: Path, recipe: str) -> list[str]:
    """What torchtune's validation says of the file (empty when it passes)."""
    errors = component_errors(_load(config_file))
    save_results()  # a write only when the file had a component not validated before
    return [f"{node}: {message}" for node, _, message in errors]


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
