"""The recipes and configs of the installed torchtune, read in-process and cached.

These are the files ``tune ls`` lists and ``tune cp`` copies. torchtune's registry is a plain
data module, read here without importing torchtune (which imports torch and torchao, ~3 s), so
listing and loading configs costs milliseconds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ck_dagster.errors import did_you_mean
from ck_dagster.finetune.torchtune_internals import RECIPES_ROOT, recipe_registry

#: the base config for experiments without ``controls.base_recipe`` (v1's template).
BUILTIN_DEFAULTS = Path(__file__).with_name("builtin_defaults.yaml")

#: the recipes ck_dagster can train with (others, e.g. generation or eval, are refused).
TRAINING_RECIPES = (
    "lora_finetune_single_device",
    "lora_finetune_distributed",
    "full_finetune_single_device",
    "full_finetune_distributed",
)


@dataclass(frozen=True)
class RecipeConfig:
    """A config ``tune ls`` lists, and the recipe that runs it."""

    name: str
    recipe: str
    file: Path


class RecipeCatalog:
    """All recipes and configs of the installed torchtune, by name."""

    def __init__(self) -> None:
        self.recipes: dict[str, list[str]] = {}
        self.configs: dict[str, RecipeConfig] = {}
        for recipe in recipe_registry().get_all_recipes():
            self.recipes[recipe.name] = [config.name for config in recipe.configs]
            for config in recipe.configs:
                self.configs.setdefault(
                    config.name,
                    RecipeConfig(
                        name=config.name,
                        recipe=recipe.name,
                        file=RECIPES_ROOT / "configs" / config.file_path,
                    ),
                )

    def get(self, name: str) -> RecipeConfig:
        """The config called ``name``; ``KeyError`` carries the "did you mean" hint."""
        try:
            return self.configs[name]
        except KeyError:
            raise KeyError(name, did_you_mean(name, self.configs)) from None

    def load(self, name: str) -> dict[str, Any]:
        """The config as a plain mapping, interpolations (``${output_dir}``) left as written."""
        return copy.deepcopy(_load_config_file(self.get(name).file))

    def builtin_defaults(self) -> dict[str, Any]:
        """The base config used when an experiment names no ``base_recipe``."""
        return copy.deepcopy(_load_config_file(BUILTIN_DEFAULTS))

    def listing(self) -> str:
        """The catalog laid out as ``tune ls`` prints it."""
        rows = [f"{'RECIPE':<40} {'CONFIG':<40}"]
        for recipe, configs in self.recipes.items():
            if not configs:
                rows.append(f"{recipe:<40} {'<>':<40}")
            for index, config in enumerate(configs):
                rows.append(f"{recipe if index == 0 else '':<40} {config:<40}")
        return "\n".join(row.rstrip() for row in rows)


@cache
def recipe_catalog() -> RecipeCatalog:
    """The process-wide catalog (torchtune's registry does not change while we run)."""
    return RecipeCatalog()


@cache
def _load_config_file(file: Path) -> dict[str, Any]:
    # OmegaConf reads YAML as torchtune does (``3e-4`` is a float, ``${...}`` kept as text).
    container = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    assert isinstance(container, dict)
    return container
