"""The private torchtune APIs ck_dagster uses, in one place, each because no public one works.

- The recipe registry (what ``tune ls`` lists) is ``torchtune._recipe_registry``. Importing
  it the usual way imports all of torchtune and torch; definitions must load without torch, so
  the (stdlib-only) file is loaded by its path.
- ``torchtune.config.validate`` raises ``ConfigError`` and ``InstantiationError``, which
  torchtune exports only from ``torchtune.config._errors``.
- Which top-level config keys a recipe reads is not declared anywhere: it is read off the
  recipe's source (``cfg.x``, ``cfg.get("x")``, ``cfg["x"]``).
- torchtune reads a config file with OmegaConf, whose YAML loader (its own float rules,
  duplicate keys refused) is ``omegaconf._yaml.get_yaml_loader``. ``read_config_text`` uses it
  alone: ``OmegaConf.create`` then wraps what it loaded in a ``DictConfig`` (~8x the time),
  which for plain values gives back what it was given.

``ck_dagster_tests/test_library_contracts.py`` fails loudly when torchtune changes any of them.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

#: the installed torchtune package folder (found without importing it).
TORCHTUNE_DIR = Path(importlib.util.find_spec("torchtune").origin).parent  # type: ignore[union-attr]
#: where torchtune installs its recipes (the top-level ``recipes`` package).
RECIPES_ROOT = TORCHTUNE_DIR.parent / "recipes"

_CFG_KEY = re.compile(r"""\bcfg(?:\.get\(\s*["'](\w+)["']|\.(\w+)\b|\[\s*["'](\w+)["']\s*\])""")
_DICTCONFIG_METHODS = {"get", "items", "keys", "values", "pop", "copy"}
#: recipe modules a recipe builds on, whose keys it reads too.
_RECIPE_IMPORT = re.compile(
    r"^from (ck_dagster\.training\.\w+) import|torchtune_recipe\(\"(\w+)\"\)", re.M
)


def recipe_registry() -> ModuleType:
    """torchtune's ``_recipe_registry`` (stdlib-only), loaded from its file when torchtune
    itself has not been imported."""
    loaded = sys.modules.get("torchtune._recipe_registry")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(
        "ck_dagster_torchtune_recipe_registry", TORCHTUNE_DIR / "_recipe_registry.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def config_errors() -> tuple[type[Exception], type[Exception]]:
    """``(ConfigError, InstantiationError)``: what ``torchtune.config.validate`` raises
    (imported when asked: it imports torch)."""
    from torchtune.config._errors import ConfigError, InstantiationError

    return ConfigError, InstantiationError


@cache
def keys_read_by(recipe: str) -> frozenset[str]:
    """The top-level config keys a recipe reads (``cfg.x``, ``cfg.get("x")``), with those of
    the torchtune and ck_dagster recipe modules it builds on. ``recipe`` is what ``tune run``
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


def read_config_text(text: str) -> Any:
    """What OmegaConf (torchtune's config reader) loads from config ``text``, as plain values:
    ``OmegaConf.to_container(OmegaConf.create(text), resolve=False)`` without the DictConfig."""
    import yaml
    from omegaconf._yaml import get_yaml_loader

    return yaml.load(text, Loader=get_yaml_loader())  # noqa: S506 - OmegaConf's own safe loader
