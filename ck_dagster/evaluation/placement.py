"""A model too large for one GPU, spread over the job's GPUs layer by layer.

A 70B model in bf16 holds ~140 GB of weights; its evaluation job gets four 80 GB GPUs
(``RESOURCES_BY_SIZE``). The decoder is built without memory (on the meta device), given the
loaded weights as they are (``load_state_dict(assign=True)``: no second copy in host memory),
and moved one module at a time: embeddings, final norm and output to the first device, the
layers in order over all of them so each device holds about the same bytes. Hooks move each
layer's inputs (hidden state, mask, positions) to its device and the last hidden state back
to the first, where the logits come out, so generation runs unchanged. A module the layers
share (the rotary embedding's cache) gets one copy per device.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchtune.modules import TransformerDecoder

from ck_dagster.errors import CkError

#: the share of the first GPU's free memory the weights may take before they are spread: the
#: rest is left for the KV cache and activations.
FITS_ONE_GPU = 0.8


def devices_to_spread_over(
    device: torch.device, weight_bytes: int, asked: Sequence[str] = ()
) -> list[torch.device]:
    """The devices to spread the model over: ``asked`` when given (the ``devices`` model arg),
    else every visible GPU when the weights do not fit the first; [] to run on ``device``."""
    if asked:
        chosen = [torch.device(name) for name in asked]
        if any(d.type == "cuda" for d in chosen) and not torch.cuda.is_available():
            raise CkError(f"devices {', '.join(asked)}: torch sees no GPU here")
        return chosen
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return []
    free, _ = torch.cuda.mem_get_info(device)
    if weight_bytes <= FITS_ONE_GPU * free:
        return []
    return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]


def layer_devices(layer_bytes: Sequence[int], first_bytes: int, devices: int) -> list[int]:
    """Which device (index) each layer goes to, in order, so that every device holds about the
    same bytes; the first also holds ``first_bytes`` (embeddings, norm, output)."""
    share = (first_bytes + sum(layer_bytes)) / devices
    placed, before = [], first_bytes
    for size in layer_bytes:
        middle = before + size / 2
        placed.append(min(devices - 1, int(middle // share)))
        before += size
    return placed


def build_on_meta(builder: Any) -> TransformerDecoder:
    """The decoder ``builder()`` makes, with no memory behind its weights."""
    with torch.device("meta"):
        return builder()


def load_assigned(
    decoder: TransformerDecoder, state: dict[str, torch.Tensor], dtype: torch.dtype
) -> None:
    """Give a meta-built decoder the loaded weights themselves, in ``dtype``, and rebuild the
    caches its modules compute at construction (rotary embeddings; under the default dtype the
    decoder is built with, as a decoder built in memory computes them)."""
    decoder.load_state_dict(state, assign=True)
    decoder.to(dtype)
    for module in decoder.modules():
        if hasattr(module, "rope_init"):
            module.rope_init()
    left = [
        name for name, t in [*decoder.named_parameters(), *decoder.named_buffers()] if t.is_meta
    ]
    if left:
        raise CkError(
            f"the model's {', '.join(left[:3])} were not in its checkpoint: cannot spread it "
            "over several devices"
        )


def spread(decoder: TransformerDecoder, devices: Sequence[torch.device]) -> list[torch.device]:
    """Move ``decoder`` over ``devices`` (see the module docstring); each layer's device."""
    first = devices[0]
    layers = list(decoder.layers)
    sizes = [_bytes(layer) for layer in layers]
    where = [devices[i] for i in layer_devices(sizes, _bytes(decoder) - sum(sizes), len(devices))]
    _copy_shared_per_device(layers, where)
    for name, child in decoder.named_children():  # embeddings, norm, output (when untied)
        if name != "layers":
            child.to(first)
    for layer, device in zip(layers, where, strict=True):
        layer.to(device)
        layer.register_forward_pre_hook(_inputs_to(device), with_kwargs=True)
    decoder.norm.register_forward_pre_hook(_inputs_to(first), with_kwargs=True)
    return where


def place_caches(decoder: TransformerDecoder, where: Sequence[torch.device]) -> None:
    """Move each layer's KV cache (set up on the first device) to the layer's device."""
    for layer, device in zip(decoder.layers, where, strict=True):
        layer.to(device)


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _copy_shared_per_device(layers: list[nn.Module], where: list[torch.device]) -> None:
    """Give each device its own copy of a module several layers share (a RoPE cache); a shared
    module with weights cannot be split, and is refused."""
    users: dict[int, set[int]] = {}
    for index, layer in enumerate(layers):
        for _, module in layer.named_modules():
            users.setdefault(id(module), set()).add(index)
    copies: dict[tuple[int, torch.device], nn.Module] = {}
    for index, layer in enumerate(layers):
        for name, module in list(layer.named_modules()):
            if not name or len(users[id(module)]) < 2:
                continue
            if any(True for _ in module.parameters()):
                raise CkError(f"layers share `{name}`, which has weights: cannot spread them")
            key = (id(module), where[index])
            copy_ = copies.setdefault(key, copy.deepcopy(module))
            parent, _, attribute = name.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, attribute, copy_)


def _inputs_to(device: torch.device) -> Any:
    """A forward pre-hook that moves a module's tensor inputs to ``device``."""

    def move(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    def hook(_: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    return hook
