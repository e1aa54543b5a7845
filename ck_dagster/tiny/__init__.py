"""tiny-llama: a Llama-3.2-shaped model small enough to pre-train and fine-tune on a laptop CPU.

``make.make_tiny_model`` writes the HF-format model folder, ``data.make_capitalization_dataset``
the data it is fine-tuned on; ``model`` holds the torchtune builders the configs name.
:func:`built_model` and :func:`built_data` make them once per machine, under the cache.
"""

from __future__ import annotations

from pathlib import Path

from ck_dagster.fileio import cache_dir, cached

#: bump whenever make_tiny_model or make_capitalization_dataset would write something different:
#: caches of built models and data (the test fixtures) are keyed by it.
VERSION = "2"


def built_model() -> Path:
    """The pre-trained ``tiny-llama`` folder in the cache (``$CK_DAGSTER_CACHE``), pre-trained
    the first time only (tens of seconds of CPU). Read-only: copy it before changing anything."""
    from ck_dagster.tiny.make import make_tiny_model  # torch: only when it is asked for

    return cached(model_cache(), make_tiny_model)


def model_cache() -> Path:
    """Where :func:`built_model` keeps the model (whether or not it was made yet)."""
    return cache_dir() / f"tiny-llama-{VERSION}"


def built_data() -> Path:
    """The capitalization JSON (train/validation/test, default sizes and seed) in the cache."""
    from ck_dagster.tiny.data import make_capitalization_dataset

    return cached(cache_dir() / f"capitalization-{VERSION}.json", make_capitalization_dataset)
