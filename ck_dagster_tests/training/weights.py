"""Weights files written by the libraries themselves, for tests of what a job leaves."""

from __future__ import annotations

from pathlib import Path


def write_weights(path: Path) -> Path:
    """A small real weights file in the format its suffix names: safetensors, else torch.save's
    zip (``.pt``, ``.bin``)."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"w": torch.ones(64, 64), "b": torch.zeros(64)}
    if path.suffix == ".safetensors":
        save_file(tensors, path)
    else:
        torch.save(tensors, path)
    return path
