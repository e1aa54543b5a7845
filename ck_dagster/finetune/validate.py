"""torchtune's own config check (what ``tune validate`` runs), one component at a time.

Checking each component node separately lets every problem be reported at once and traced
back to the experiment field that set it.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchtune.config import validate
from torchtune.config._errors import ConfigError, InstantiationError

_INTERPOLATION = re.compile(r"\$\{(\w+)")
_ARGUMENT = re.compile(r"(?:unexpected keyword argument|missing a required argument:?) '(\w+)'")


def component_errors(config: Mapping[str, Any]) -> list[tuple[str, str | None, str]]:
    """Problems torchtune finds, as (node, argument or None, message); empty when valid."""
    errors: list[tuple[str, str | None, str]] = []
    for node, value in config.items():
        if _is_component(value):
            # Only the keys the node interpolates (${output_dir}) matter to it, so runs that
            # share a component share one validation.
            text = json.dumps(value, sort_keys=True)
            used = {key: config[key] for key in _INTERPOLATION.findall(text) if key in config}
            errors += _node_errors(node, json.dumps({**used, node: value}, sort_keys=True))
    return errors


@lru_cache(maxsize=4096)
def _node_errors(node: str, config_json: str) -> tuple[tuple[str, str | None, str], ...]:
    errors = []
    try:
        validate(OmegaConf.create(json.loads(config_json)))
    except ConfigError as exc:
        errors += [_argument_error(node, str(error)) for error in exc.errors]
    except TypeError as exc:  # torchtune lets bind_partial's TypeError escape
        errors.append(_argument_error(node, str(exc)))
    except (InstantiationError, ValueError) as exc:
        message = " ".join(str(exc).split())
        errors.append((node, "_component_", f"cannot import the component: {message}"))
    except OmegaConfBaseException as exc:
        errors.append((node, None, f"cannot be read: {exc}"))
    return tuple(errors)


def _argument_error(node: str, message: str) -> tuple[str, str | None, str]:
    match = _ARGUMENT.search(message)
    return node, match.group(1) if match else None, message


def _is_component(value: Any) -> bool:
    return isinstance(value, Mapping) and "_component_" in value
