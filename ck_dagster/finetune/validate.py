"""torchtune's own config check (what ``tune validate`` runs), one component at a time.

Checking each component node separately lets every problem be reported at once and traced
back to the experiment field that set it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from ck_dagster.fileio import atomic_write_text, cache_dir
from ck_dagster.finetune.torchtune_internals import config_errors

_INTERPOLATION = re.compile(r"\$\{(\w+)")
_ARGUMENT = re.compile(r"(?:unexpected keyword argument|missing a required argument:?) '(\w+)'")
#: components whose code changes only with an installed version (or ck_dagster's own source),
#: so their results can be kept between processes.
_KEEPABLE = ("torch.", "torchtune.", "ck_dagster.")
_PACKAGES = ("torch", "torchtune", "torchao", "omegaconf")
#: what stands for any plain value in a validation's key (see ``_shape``).
_PLAIN = "plain value"

Error = tuple[str, str | None, str]


def component_errors(config: Mapping[str, Any]) -> list[Error]:
    """Problems torchtune finds, as (node, argument or None, message); empty when valid."""
    errors: list[Error] = []
    for node, value in config.items():
        if _is_component(value):
            # Only the node and the keys it interpolates (${output_dir}) matter to it, and of
            # a plain value only that it is there: torchtune binds arguments by name, not
            # value. So the runs of a sweep (a folder, a rank each) share one validation.
            text = json.dumps(value, sort_keys=True)
            used = {key: config[key] for key in _INTERPOLATION.findall(text) if key in config}
            errors += _node_errors(
                node,
                json.dumps(_shape({**used, node: value}), sort_keys=True),
                str(value["_component_"]).startswith(_KEEPABLE),
            )
    return errors


def _node_errors(node: str, config_json: str, keepable: bool) -> list[Error]:
    """One node's errors: from this process's memory, from the on-disk results of earlier
    processes with the same installed versions, or by running torchtune's validation (which
    imports torchtune, ~3 s, so a materialization of already-registered runs skips it)."""
    results = _results()
    key = hashlib.sha256(config_json.encode()).hexdigest()
    if key not in results:
        results[key] = _validate(node, config_json)
        if keepable:
            _unsaved()[key] = results[key]
    return [tuple(error) for error in results[key]]  # type: ignore[misc]


def _validate(node: str, config_json: str) -> list[Error]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from torchtune.config import validate

    ConfigError, InstantiationError = config_errors()

    errors: list[Error] = []
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
    return errors


@cache
def _results() -> dict[str, list[Error]]:
    """Results kept by earlier processes for the installed versions (empty when none)."""
    try:
        return json.loads(_results_file().read_text())
    except (OSError, ValueError):
        return {}


@cache
def _unsaved() -> dict[str, list[Error]]:
    """Keepable results found by this process and not yet in the on-disk file."""
    return {}


def save_results() -> None:
    """Add this process's new results to the on-disk file (merged with what other processes
    wrote), in one write: planners call it once per experiment, not once per component, as a
    write per result made registering 1000 new runs quadratic in the file's size."""
    unsaved = _unsaved()
    if not unsaved:
        return
    try:
        kept = json.loads(_results_file().read_text())
    except (OSError, ValueError):
        kept = {}
    kept.update(unsaved)
    unsaved.clear()
    try:
        atomic_write_text(_results_file(), json.dumps(kept))
    except OSError:
        pass  # a read-only cache only costs time


@cache
def _results_file() -> Path:
    """Named by everything a validation depends on: Python and package versions, and the
    source of ck_dagster's own components (dataset, tiny model builders)."""
    digest = hashlib.sha256(sys.version.encode())
    for package in _PACKAGES:
        digest.update(f"{package}={importlib.metadata.version(package)}".encode())
    root = Path(__file__).resolve().parents[1]
    for source in sorted(
        [*root.joinpath("finetune").glob("*.py"), *root.joinpath("tiny").glob("*.py")]
    ):
        digest.update(source.read_bytes())
    return cache_dir() / f"torchtune-validation-{digest.hexdigest()[:16]}.json"


def _argument_error(node: str, message: str) -> tuple[str, str | None, str]:
    match = _ARGUMENT.search(message)
    return node, match.group(1) if match else None, message


def _shape(value: Any) -> Any:
    """``value`` with each plain value (a path, a name, a number) replaced by one stand-in;
    components' paths and interpolations are kept, as validation depends on them."""
    if isinstance(value, Mapping):
        return {k: v if k == "_component_" else _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return value if isinstance(value, str) and "${" in value else _PLAIN


def _is_component(value: Any) -> bool:
    return isinstance(value, Mapping) and "_component_" in value
