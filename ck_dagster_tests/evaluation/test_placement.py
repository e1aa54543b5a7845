"""Spreading a model over several devices (evaluation.placement).

No machine here has two GPUs, so the spread model runs on "devices" that are all the CPU: that
exercises everything but the copies between GPUs (the meta build, the weights assigned, the
rotary caches rebuilt and copied per device, the hooks, the KV caches placed), and must
generate exactly what the model loaded on one device does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ck_dagster.catalog.models import get_model as get_model_spec
from ck_dagster.errors import CkError
from ck_dagster.evaluation.placement import devices_to_spread_over, layer_devices
from ck_dagster.evaluation.provider import (
    Decoding,
    ProviderArgs,
    apply_adapter,
    generate,
    load_checkpoint,
    prompt_tokens,
)
from ck_dagster.evaluation.spec import TorchtuneModel
from ck_dagster.finetune.dataset import prompt_messages
from ck_dagster_tests.evaluation.tiny_experiment import PROMPT, SYSTEM_PROMPT

GB = 10**9


def test_layers_go_in_order_and_every_device_holds_about_the_same() -> None:
    # Llama 3.3 70B in bf16: 80 layers of ~1.71 GB, embeddings + output ~4.2 GB, 4 GPUs
    layers = [int(1.71 * GB)] * 80
    placed = layer_devices(layers, int(4.2 * GB), 4)
    assert placed == sorted(placed) and set(placed) == {0, 1, 2, 3}
    held = [sum(size for size, d in zip(layers, placed) if d == device) for device in range(4)]
    held[0] += int(4.2 * GB)
    share = (sum(layers) + 4.2 * GB) / 4
    assert all(abs(h - share) <= 1.71 * GB for h in held), held
    assert placed.count(0) < placed.count(3)  # the first device also holds the embeddings
    assert layer_devices([5, 5], 0, 1) == [0, 0]


def test_no_spreading_on_cpu_unless_asked() -> None:
    assert devices_to_spread_over(torch.device("cpu"), 10**15) == []
    assert (
        devices_to_spread_over(torch.device("cpu"), 1, ("cpu", "cpu")) == [torch.device("cpu")] * 2
    )
    if not torch.cuda.is_available():
        with pytest.raises(CkError, match="torch sees no GPU"):
            devices_to_spread_over(torch.device("cpu"), 1, ("cuda:0", "cuda:1"))


def test_a_spread_model_generates_what_one_device_does(tiny_model_dir: Path) -> None:
    model = TorchtuneModel.of(get_model_spec("tiny-llama"), tiny_model_dir)
    whole = load_checkpoint(model, tiny_model_dir)
    spread = load_checkpoint(model, tiny_model_dir, ("cpu", "cpu", "cpu"))
    assert spread.layer_devices == [torch.device("cpu")] * len(spread.model.layers)
    assert not whole.layer_devices
    tensors = [*spread.model.named_parameters(), *spread.model.named_buffers()]
    assert not [name for name, tensor in tensors if tensor.is_meta]
    assert all(layer._forward_pre_hooks for layer in spread.model.layers)
    # the rotary embedding the layers shared is one copy per device, with the same cache
    whole_rope = whole.model.layers[0].attn.pos_embeddings
    ropes = {id(layer.attn.pos_embeddings) for layer in spread.model.layers}
    assert len(ropes) == 1 and id(whole_rope) not in ropes
    assert torch.equal(spread.model.layers[0].attn.pos_embeddings.cache, whole_rope.cache)
    for name, weight in whole.model.state_dict().items():
        assert torch.equal(spread.model.state_dict()[name], weight), name

    prompts = [
        prompt_tokens(
            whole.tokenizer, prompt_messages(word, prompt=PROMPT, system_prompt=SYSTEM_PROMPT)
        )
        for word in ("apple", "fig", "blueberry")
    ]
    expected = generate(whole, prompts, Decoding(12))
    assert generate(spread, prompts, Decoding(12)) == expected
    assert [generate(spread, [p], Decoding(12))[0] for p in prompts] == expected


def test_the_devices_model_arg_reaches_the_load(tiny_model_dir: Path) -> None:
    args = ProviderArgs.parse(
        {"checkpoint_dir": str(tiny_model_dir), "ck_model": "tiny-llama", "devices": "cpu,cpu"}
    )
    assert args.devices == ("cpu", "cpu")
    assert ProviderArgs.parse(args.as_model_args()) == args
    checkpoint = load_checkpoint(args.model, args.checkpoint_dir, args.devices)
    assert len(set(checkpoint.layer_devices)) == 1 and checkpoint.layer_devices
    apply_adapter(checkpoint, None)  # the adapter path takes a spread model as it is
