"""torchtune's own config check (what ``tune validate`` runs), one component at a time.

Checking each component node separately lets every problem be reported at once and traced
back to the experiment field that set it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchtune.config import validate
from torchtune.config._errors import ConfigError, InstantiationError

_ARGUMENT = re.compile(r"(?:unexpected keyword argument|missing a required argument:?) '(\w+)'")


def component_errors(config: Mapping[str, Any]) -> list[tuple[str, str | None, str]]:
    """Problems torchtune finds, as (node, argument or None, message); empty when valid."""
    plain = {k: v for k, v in config.items() if not _is_component(v)}
    errors = []
    for node, value in config.items():
        if not _is_component(value):
            continue
        try:
            validate(OmegaConf.create({**plain, node: value}))
        except ConfigError as exc:
            errors += [_argument_error(node, str(error)) for error in exc.errors]
        except TypeError as exc:  # torchtune lets bind_partial's TypeError escape
            errors.append(_argument_error(node, str(exc)))
        except (InstantiationError, ValueError) as exc:
            message = " ".join(str(exc).split())
            errors.append((node, "_component_", f"cannot import the component: {message}"))
        except OmegaConfBaseException as exc:
            errors.append((node, None, f"cannot be read: {exc}"))
    return errors


def _argument_error(node: str, message: str) -> tuple[str, str | None, str]:
    match = _ARGUMENT.search(message)
    return node, match.group(1) if match else None, message


def _is_component(value: Any) -> bool:
    return isinstance(value, Mapping) and "_component_" in value
