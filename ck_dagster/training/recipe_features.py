"""What ck_dagster's recipes add to torchtune's single-device recipes, as a mixin.

torchtune 0.6.1's recipes save every epoch and compute no validation loss. ``RecipeFeatures``
adds, by overriding the recipe's public hooks (``setup``, ``save_checkpoint``) and wrapping its
profiler (whose ``step()`` the training loop calls once per batch), never by copying its loop:

- ``validation_during_training``: loss on ``dataset_val`` (the data's validation split) at the
  end of every epoch and every ``run_val_every_n_steps`` optimizer steps, logged as ``val_loss``
  through the recipe's metric logger, beside the training loss;
- ``epochs_to_save`` / ``save_last_epoch_only``: only those epochs' checkpoints are written;
- ``stash_adapter_weights`` (cruijff_kit v1's meaning): the adapter files torchtune writes beside
  merged weights are moved into ``epoch_<N>/adapter_weights/``, so tools that detect a PEFT
  adapter in a folder (transformers, inspect's ``hf/``) load the merged model instead.

Used by ``lora_recipe`` and ``full_recipe`` (``tune run ck_dagster/training/lora_recipe.py``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from omegaconf import DictConfig
from torchtune import config, utils

from ck_dagster.catalog.parameters import kept_epochs
from ck_dagster.finetune.torchtune_internals import RECIPES_ROOT
from ck_dagster.training.artifacts import FINISHED

log = utils.get_logger("INFO")

#: the files torchtune writes for an adapter; ``stash_adapter_weights`` moves them here.
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.pt",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
STASH_DIR = "adapter_weights"


def torchtune_recipe(name: str) -> ModuleType:
    """torchtune's recipe module ``name`` (e.g. ``lora_finetune_single_device``), loaded from the
    file ``tune run`` runs: its ``recipes`` folder refuses to be imported as a package."""
    module_name = f"torchtune_recipe_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, RECIPES_ROOT / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


class _StepHook:
    """The recipe's profiler, with a callback after every batch's ``step()``."""

    def __init__(self, profiler: Any, after_step: Any) -> None:
        self._profiler, self._after_step = profiler, after_step

    def __enter__(self) -> _StepHook:
        self._profiler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._profiler.__exit__(*exc)

    def step(self) -> None:
        self._profiler.step()
        self._after_step()

    def __getattr__(self, name: str) -> Any:  # start(), stop() and the rest
        return getattr(self._profiler, name)


@contextmanager
def _weights_kept(model: torch.nn.Module) -> Iterator[None]:
    """Restore the base weights of LoRA layers after torchtune's LoRA recipe saved merged
    weights: it merges into ``{k: v.cpu()}`` of the model's state, which on CPU is the live
    weights themselves, so every later epoch would train on (and merge into) weights that
    already hold the earlier adapters."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    names = (
        {
            key.rsplit(".lora_", 1)[0] + ".weight"
            for key, _ in model.named_parameters()
            if ".lora_" in key
        }
        if on_cpu
        else set()
    )
    kept = {name: p.detach().clone() for name, p in model.named_parameters() if name in names}
    yield
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in kept:
                p.copy_(kept[name])


class RecipeFeatures:
    """Mixin for a torchtune single-device recipe class; see the module docstring."""

    def setup(self, cfg: DictConfig) -> None:
        super().setup(cfg)  # type: ignore[misc]
        self._ck_keep = set(
            kept_epochs(
                {
                    "epochs": cfg.epochs,
                    "epochs_to_save": cfg.get("epochs_to_save", "all"),
                    "save_last_epoch_only": cfg.get("save_last_epoch_only", False),
                }
            )
        )
        self._ck_stash = bool(cfg.get("stash_adapter_weights", False))
        self._ck_val_every = int(cfg.get("run_val_every_n_steps", 0) or 0)
        self._ck_val_loader = None
        self._ck_val_step = -1
        if cfg.get("validation_during_training", False):
            self._ck_val_loader = self._setup_data(  # type: ignore[attr-defined]
                cfg_dataset=cfg.dataset_val,
                shuffle=False,
                batch_size=cfg.batch_size,
                collate_fn=cfg.get("collate_fn", "torchtune.data.padded_collate_sft"),
            )
            if len(self._ck_val_loader) == 0:
                raise ValueError(
                    f"dataset_val has fewer rows than one batch ({cfg.batch_size}):"
                    " give the validation split more rows, or lower batch_size"
                )
            self._profiler = _StepHook(self._profiler, self._ck_after_step)
        log.info(
            f"ck_dagster: keeping epochs {sorted(self._ck_keep)}; validation "
            f"{'on' if self._ck_val_loader is not None else 'off'}"
        )

    def _ck_after_step(self) -> None:
        step = self.global_step  # type: ignore[attr-defined]
        if self._ck_val_every and step and step % self._ck_val_every == 0:
            self._ck_validate()

    def save_checkpoint(self, epoch: int) -> None:
        """Validate at the epoch's end; save the epoch only when it is one to keep."""
        if self._ck_val_loader is not None:
            self._ck_validate()
        if epoch not in self._ck_keep:
            log.info(f"ck_dagster: epoch {epoch} is not in epochs_to_save: not saved")
            return
        with _weights_kept(self._model):  # type: ignore[attr-defined]
            super().save_checkpoint(epoch)  # type: ignore[misc]
        if self._ck_stash:
            folder = Path(self._output_dir) / f"epoch_{epoch}"  # type: ignore[attr-defined]
            (folder / STASH_DIR).mkdir(exist_ok=True)
            for name in ADAPTER_FILES:
                if (folder / name).is_file():
                    shutil.move(str(folder / name), str(folder / STASH_DIR / name))

    def cleanup(self) -> None:
        """Close the loggers, then mark training as finished (what adoption looks for when
        no epoch is kept)."""
        super().cleanup()  # type: ignore[misc]
        (Path(self._output_dir) / FINISHED).write_text(  # type: ignore[attr-defined]
            json.dumps({"saved_epochs": sorted(self._ck_keep)}) + "\n"
        )

    @torch.no_grad()
    def _ck_validate(self) -> None:
        """Token-weighted mean loss over the validation split, logged as ``val_loss``."""
        step = self.global_step  # type: ignore[attr-defined]
        if step == self._ck_val_step:  # an epoch's end that a step interval just validated
            return
        self._ck_val_step = step
        model, ignore = self._model, self._loss_fn.ignore_index  # type: ignore[attr-defined]
        model.eval()
        total, tokens = 0.0, 0
        for batch in self._ck_val_loader:
            utils.batch_to_device(batch, self._device)  # type: ignore[attr-defined]
            count = int((batch["labels"] != ignore).sum())
            total += float(self._loss_step(batch)) * count  # type: ignore[attr-defined]
            tokens += count
        model.train()
        self._metric_logger.log_dict(  # type: ignore[attr-defined]
            {"val_loss": total / max(tokens, 1)}, step=step
        )


def run_recipe(recipe_class: type) -> None:
    """Parse ``--config`` and overrides from the command line, then set up, train and clean
    up, as torchtune's own recipe entry points do."""

    @config.parse
    def recipe_main(cfg: DictConfig) -> None:
        config.log_config(recipe_name=recipe_class.__name__, cfg=cfg)
        recipe = recipe_class(cfg=cfg)
        recipe.setup(cfg=cfg)
        recipe.train()
        recipe.cleanup()

    recipe_main()
