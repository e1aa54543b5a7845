"""inspect-ai's entry point into ck_dagster (``[project.entry-points.inspect_ai]``).

Registers the ``torchtune/`` model provider, so ``inspect eval ... --model torchtune/NAME
-M checkpoint_dir=DIR -M ck_model=tiny-llama`` works from the command line. The provider module
(torch, torchtune) is imported only when such a model is asked for.
"""

from __future__ import annotations

from inspect_ai.model import ModelAPI, modelapi


@modelapi(name="torchtune")
def torchtune() -> type[ModelAPI]:
    from ck_dagster.evaluation.provider import TorchtuneAPI

    return TorchtuneAPI
