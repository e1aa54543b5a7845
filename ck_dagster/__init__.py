"""ck_dagster: LLM fine-tuning experiments on SLURM as partitioned Dagster assets.

The domain packages (``catalog``, ``experiment``, ``finetune``, ``slurm``, ``training``,
``evaluation``, ``report``, ``tiny``) are plain Python; only ``ck_dagster.assets`` and
``ck_dagster.definitions`` import Dagster. ``defs`` is loaded on first access, so
``dagster ... -m ck_dagster`` finds it while importing a domain package stays light.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "defs":
        from ck_dagster.definitions import defs

        return defs
    raise AttributeError(f"module 'ck_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), "defs"]
