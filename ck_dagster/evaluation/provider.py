"""The ``torchtune/`` inspect-ai model provider: a checkpoint loaded with torchtune, prompted
exactly as training tokenized its conversations.

Model args (``-M`` on the ``inspect eval`` command line, ``model_args`` in Python):

- ``checkpoint_dir`` (required): an HF-format model folder (a base model or an ``epoch_<N>``);
- ``adapter_dir``: a LoRA epoch folder whose adapter (torchtune's ``adapter_model.pt`` and
  ``adapter_config.json``, also when stashed in ``adapter_weights/``) is merged into the
  weights loaded from ``checkpoint_dir``, with torchtune's own merge (``get_merged_lora_ckpt``,
  what its LoRA recipe saves as merged weights);
- ``ck_model``: a ck_dagster model name (e.g. ``tiny-llama``) whose builder, tokenizer and
  checkpointer settings to use, with the tokenizer files taken from ``checkpoint_dir``
  (``model`` would clash with inspect's own argument of that name);
- or any field of :class:`~ck_dagster.evaluation.spec.TorchtuneModel` (``builder``,
  ``tokenizer``, ``model_type``, ``checkpoint_files``, ``device``, ``dtype``) to set or
  override those;
- ``do_sample``: sample (seeded by the generate config's ``seed``) instead of greedy decoding;
- ``devices``: spread the model's layers over these devices (``cuda:0,cuda:1``); by default a
  model whose weights do not fit the first GPU is spread over every visible one
  (``evaluation.placement``).

Generation is greedy unless ``do_sample`` is true and the temperature is not 0; it stops at the
tokenizer's stop tokens or after ``max_tokens``. Concurrent requests run as one left-padded
batch (so sampled answers repeat for a seed when requests batch alike; ``max_connections: 1``
makes that certain). Every call's prompt token ids are logged with it (the model event's API
call).

A process keeps the last model it loaded: a provider for the same folder and settings reuses
it, so the epochs of a LoRA run (and runs sharing a base model) are evaluated on one load, each
applying its adapter to the base weights in turn. Loading another model releases it.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import torch
from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    GenerateConfig,
    ModelAPI,
    ModelCall,
    ModelOutput,
    ModelUsage,
)
from inspect_ai.tool import ToolChoice, ToolInfo
from omegaconf import OmegaConf
from pydantic import ValidationError
from torchtune import config as tune_config
from torchtune import training
from torchtune.data import Message
from torchtune.generation import (
    get_causal_mask_from_padding_mask,
    get_position_ids_from_padding_mask,
    sample,
)
from torchtune.modules import TransformerDecoder, local_kv_cache
from torchtune.modules.peft import get_merged_lora_ckpt
from torchtune.modules.transforms import Transform

from ck_dagster.catalog.models import get_model
from ck_dagster.errors import CkError
from ck_dagster.evaluation.placement import (
    build_on_meta,
    devices_to_spread_over,
    load_assigned,
    place_caches,
    spread,
)
from ck_dagster.evaluation.spec import TorchtuneModel
from ck_dagster.training.artifacts import SAFETENSORS_INDEX

#: new tokens when an evaluation sets no max_tokens: inspect-ai's default (its constant is private).
DEFAULT_MAX_NEW_TOKENS = 2048


@dataclass(frozen=True)
class ProviderArgs:
    """The provider's model args, parsed: which folder, loaded how, decoded how."""

    checkpoint_dir: Path
    model: TorchtuneModel
    do_sample: bool = False
    adapter_dir: Path | None = None
    #: devices to spread the model's layers over (``devices``); (): one device, or every
    #: visible GPU when the model does not fit on one.
    devices: tuple[str, ...] = ()

    @classmethod
    def parse(cls, args: Mapping[str, Any]) -> ProviderArgs:
        """Read model args (see the module docstring); unknown ones are refused by name."""
        args = dict(args)
        if "checkpoint_dir" not in args:
            raise CkError("the torchtune provider needs -M checkpoint_dir=<model folder>")
        checkpoint_dir = Path(args.pop("checkpoint_dir"))
        do_sample = bool(args.pop("do_sample", False))
        adapter = args.pop("adapter_dir", None)
        devices = args.pop("devices", ())
        if isinstance(devices, str):  # -M devices=cuda:0,cuda:1
            devices = devices.split(",")
        name = args.pop("ck_model", None)
        args.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
        args.setdefault("dtype", "bf16" if args["device"].startswith("cuda") else "fp32")
        try:
            known = TorchtuneModel.of(get_model(name), checkpoint_dir).model_dump() if name else {}
            model = TorchtuneModel.model_validate({**known, **args})
        except (KeyError, ValidationError) as exc:
            raise CkError(
                f"torchtune provider model args: {exc}; give -M ck_model=<a "
                "ck_dagster model name> or builder, tokenizer, model_type"
            ) from None
        return cls(
            checkpoint_dir,
            model,
            do_sample,
            Path(adapter) if adapter else None,
            tuple(str(d).strip() for d in devices if str(d).strip()),
        )

    def as_model_args(self) -> dict[str, Any]:
        """These args as ``get_model(**model_args)`` takes them (and the eval log records)."""
        adapter = {"adapter_dir": str(self.adapter_dir)} if self.adapter_dir else {}
        devices = {"devices": ",".join(self.devices)} if self.devices else {}
        return {
            "checkpoint_dir": str(self.checkpoint_dir),
            "do_sample": self.do_sample,
            **adapter,
            **devices,
            **self.model.model_dump(),
        }


@dataclass
class Checkpoint:
    """A model folder loaded for generation: the decoder, training's tokenizer, where it runs,
    and which adapter is merged into its weights (with the weights it replaced, on CPU)."""

    model: TransformerDecoder
    tokenizer: Transform
    device: torch.device
    dtype: torch.dtype
    adapter: Path | None = None
    replaced: dict[str, torch.Tensor] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: each layer's device when the model is spread over several ([]: all on ``device``).
    layer_devices: list[torch.device] = field(default_factory=list)


#: the model this process loaded last, by its settings and folder (see the module docstring).
_LOADED: dict[str, Checkpoint] = {}


def shared_checkpoint(
    model: TorchtuneModel, folder: Path, spread_over: Sequence[str] = ()
) -> Checkpoint:
    """The loaded model for these settings and folder: the one loaded last when they match,
    else a fresh load (after releasing the previous one)."""
    key = _loaded_key(model, folder, spread_over)
    if key not in _LOADED:
        release_checkpoints()
        _LOADED[key] = load_checkpoint(model, Path(folder), spread_over)
    return _LOADED[key]


def is_loaded(args: ProviderArgs) -> bool:
    """Whether this process holds the model ``args`` load (so a provider reuses it)."""
    return _loaded_key(args.model, args.checkpoint_dir, args.devices) in _LOADED


def _loaded_key(model: TorchtuneModel, folder: Path, spread_over: Sequence[str]) -> str:
    return f"{model.identity()}|{Path(folder).resolve()}|{','.join(spread_over)}"


def release_checkpoints() -> None:
    """Free the kept model (and the GPU memory it held)."""
    _LOADED.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def apply_adapter(checkpoint: Checkpoint, folder: Path | None) -> None:
    """Merge the LoRA adapter saved in epoch folder ``folder`` into the loaded weights (None:
    back to the loaded weights), as torchtune merges it on saving (``get_merged_lora_ckpt``:
    ``W + (alpha / rank) * B @ A`` in its module layout, on CPU, in the model's dtype), so the
    weights are bit for bit those torchtune saves merged. Each weight is written once."""
    if checkpoint.adapter == folder:
        return
    parameters = dict(checkpoint.model.named_parameters())
    adapter, rank, alpha = read_adapter(folder) if folder is not None else ({}, 1, 1.0)
    modules = {key.rsplit(".lora_", 1)[0] for key in adapter if ".lora_" in key}
    with torch.no_grad():
        for key, weight in checkpoint.replaced.items():  # weights this adapter leaves alone
            if key.removesuffix(".weight") not in modules:
                parameters[key].copy_(weight)
        checkpoint.adapter = None
        for module in sorted(modules):
            key = f"{module}.weight"
            if key not in parameters:
                raise CkError(
                    f"{folder}: the adapter has `{module}`, which the model lacks: "
                    "was it trained on another model?"
                )
            if key not in checkpoint.replaced:
                checkpoint.replaced[key] = parameters[key].detach().cpu().clone()
            base = checkpoint.replaced[key]
            if f"{module}.magnitude" in adapter:  # DoRA: torchtune's merge, on a copy
                merged = get_merged_lora_ckpt(
                    {
                        key: base.clone(),
                        **{k: v for k, v in adapter.items() if k.startswith(module + ".")},
                    },
                    rank=rank,
                    alpha=alpha,
                )[key]
                parameters[key].copy_(merged)
                continue
            a, b = adapter[f"{module}.lora_a.weight"], adapter[f"{module}.lora_b.weight"]
            # torchtune: state_dict[w] += (alpha / rank) * lora_b @ lora_a, on CPU tensors
            delta = (alpha / rank) * b @ a
            if parameters[key].device.type == "cpu":
                torch.add(base, delta, out=parameters[key].data)
            else:
                parameters[key].copy_(base + delta)
    checkpoint.adapter = folder


def read_adapter(folder: Path) -> tuple[dict[str, torch.Tensor], int, float]:
    """An epoch folder's LoRA adapter in torchtune's layout, its rank and its alpha: what
    torchtune's checkpointer writes (``adapter_model.pt``, ``adapter_config.json``), in the
    folder or stashed in its ``adapter_weights/``."""
    for where in (folder, folder / "adapter_weights"):
        weights, config = where / "adapter_model.pt", where / "adapter_config.json"
        if weights.is_file() and config.is_file():
            settings = json.loads(config.read_text())
            state = torch.load(weights, map_location="cpu", weights_only=True)
            return state, int(settings["r"]), float(settings["lora_alpha"])
    raise CkError(
        f"{folder} holds no LoRA adapter (adapter_model.pt and adapter_config.json): "
        "has its training finished?"
    )


def load_checkpoint(
    model: TorchtuneModel, folder: Path, spread_over: Sequence[str] = ()
) -> Checkpoint:
    """Build the model with its torchtune builder and load the folder's HF weights into it
    through torchtune's FullModelHFCheckpointer (its own HF-to-torchtune conversion). A model
    too large for one GPU is spread over every visible one (``spread_over``: these devices),
    see ``evaluation.placement``."""
    device = torch.device(model.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CkError(
            f"evaluating {folder} asks for device {model.device}, but torch sees no "
            "GPU here: run it where one is, or set device cpu"
        )
    if not (folder / "config.json").is_file():
        raise CkError(
            f"{folder} is not an HF-format model folder (no config.json): has its "
            "training finished?"
        )
    dtype = training.get_dtype(model.dtype, device)
    with tempfile.TemporaryDirectory(prefix="ck_dagster_eval_") as scratch:
        checkpointer = training.FullModelHFCheckpointer(
            checkpoint_dir=str(folder),
            checkpoint_files=_weight_files(folder, model),
            model_type=model.model_type,
            output_dir=scratch,
        )
        state = checkpointer.load_checkpoint()[training.MODEL_KEY]
    weight_bytes = sum(t.numel() for t in state.values()) * dtype.itemsize
    devices = devices_to_spread_over(device, weight_bytes, spread_over)

    def build() -> TransformerDecoder:
        return tune_config.instantiate(OmegaConf.create({"_component_": model.builder}))

    layer_devices: list[torch.device] = []
    with training.set_default_dtype(dtype):
        if devices:
            decoder = build_on_meta(build)
            load_assigned(decoder, state, dtype)
            layer_devices, device = spread(decoder, devices), devices[0]
        else:
            with device:
                decoder = build()
            decoder.load_state_dict(state)
    decoder.eval()
    tokenizer = tune_config.instantiate(OmegaConf.create(model.tokenizer))
    return Checkpoint(decoder, tokenizer, device, dtype, layer_devices=layer_devices)


def _weight_files(folder: Path, model: TorchtuneModel) -> list[str] | dict[str, str]:
    """The folder's weight files: those its safetensors index names (every epoch folder
    torchtune saves has one), else the model's usual files (a base model)."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return model.checkpoint_files


def prompt_tokens(tokenizer: Transform, messages: list[Message]) -> list[int]:
    """The token ids training's tokenizer makes of ``messages`` up to the assistant's answer.

    The same call torchtune's generation recipe makes: the conversation plus an empty
    assistant message, tokenized for inference (no end-of-turn or end-of-text tokens).
    """
    conversation = [*messages, Message(role="assistant", content="")]
    return list(tokenizer({"messages": conversation}, inference=True)["tokens"])


@dataclass(frozen=True)
class Decoding:
    """How one request generates: length, and greedy (temperature None) or sampled."""

    max_new_tokens: int
    temperature: float | None = None
    top_k: int | None = None


@dataclass(frozen=True)
class Generation:
    """One generated answer: its token ids (stop token excluded) and whether a stop token
    ended it (else the length limit did)."""

    tokens: list[int]
    stopped: bool


@torch.inference_mode()
def generate(
    checkpoint: Checkpoint,
    prompts: list[list[int]],
    decoding: Decoding,
    *,
    rng: torch.Generator | None = None,
) -> list[Generation]:
    """Generate for a batch of prompts, left-padded, with a KV cache; each row stops at the
    tokenizer's stop tokens. No logits are kept (a long answer from a large vocabulary would
    not fit), which is why this is not ``torchtune.generation.generate``."""
    model, tokenizer, device = checkpoint.model, checkpoint.tokenizer, checkpoint.device
    pad_id, stop_ids = tokenizer.pad_id, torch.tensor(tokenizer.stop_tokens, device=device)
    rows, longest = len(prompts), max(map(len, prompts))
    total = longest + decoding.max_new_tokens
    tokens = torch.full((rows, longest), pad_id, dtype=torch.long, device=device)
    not_padding = torch.ones((rows, total), dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt) :] = torch.tensor(prompt, device=device)
        not_padding[row, : longest - len(prompt)] = False
    masks = get_causal_mask_from_padding_mask(not_padding, target_seq_len=total)
    positions = get_position_ids_from_padding_mask(not_padding)
    answers: list[list[int]] = [[] for _ in prompts]
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    with local_kv_cache(
        model, batch_size=rows, device=device, dtype=checkpoint.dtype, decoder_max_seq_len=total
    ):
        if checkpoint.layer_devices:
            place_caches(model, checkpoint.layer_devices)
        logits = model(tokens, input_pos=positions[:, :longest], mask=masks[:, :longest])
        for step in range(decoding.max_new_tokens):
            next_ids = _pick(logits[:, -1].float(), decoding, rng)
            for row in (~stopped).nonzero().flatten().tolist():
                answers[row].append(int(next_ids[row]))
            stopped |= torch.isin(next_ids, stop_ids)
            if stopped.all() or step + 1 == decoding.max_new_tokens:
                break
            at = longest + step
            logits = model(
                next_ids[:, None], input_pos=positions[:, at, None], mask=masks[:, at, None, :]
            )
    return [
        Generation(answer[:-1], True) if done else Generation(answer, False)
        for answer, done in zip(answers, stopped.tolist())
    ]


def _pick(logits: torch.Tensor, decoding: Decoding, rng: torch.Generator | None) -> torch.Tensor:
    """Next token per row: the most likely (greedy), or sampled with torchtune's sampler."""
    if decoding.temperature is None:
        return logits.argmax(dim=-1)
    noise = torch.empty_like(logits).exponential_(1, generator=rng)
    return sample(logits, temperature=decoding.temperature, top_k=decoding.top_k, q=noise).flatten()


@dataclass
class _Request:
    prompt: list[int]
    decoding: Decoding
    result: Generation | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class _Batcher:
    """Runs concurrent generate calls in batches: whichever call holds the lock runs every
    waiting request that decodes alike (up to ``max_size``), so each batch is what arrived
    while the previous one ran. Each ``eval()`` runs its own event loop, hence a lock per loop.
    """

    run: Callable[[list[list[int]], Decoding], list[Generation]]
    waiting: list[_Request] = field(default_factory=list)
    _loop: anyio.lowlevel.EventLoopToken | None = None
    _lock: anyio.Lock | None = None

    async def submit(self, request: _Request, max_size: int) -> Generation:
        loop = anyio.lowlevel.current_token()
        if self._lock is None or loop != self._loop:
            self._loop, self._lock = loop, anyio.Lock()
        self.waiting.append(request)
        async with self._lock:
            while not request.done:
                await self._run_next(max_size)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def _run_next(self, max_size: int) -> None:
        decoding = self.waiting[0].decoding
        batch = [r for r in self.waiting if r.decoding == decoding][:max_size]
        self.waiting = [r for r in self.waiting if r not in batch]
        try:
            results = await anyio.to_thread.run_sync(self.run, [r.prompt for r in batch], decoding)
        except Exception as exc:  # every request of the batch fails with it
            results = [None] * len(batch)
            for request in batch:
                request.error = exc
        for request, result in zip(batch, results):
            request.result, request.done = result, True


class TorchtuneAPI(ModelAPI):
    """inspect-ai's model API over a torchtune checkpoint; see the module docstring."""

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),
        **model_args: Any,
    ) -> None:
        super().__init__(
            model_name=model_name,
            base_url=base_url,
            api_key=api_key,
            api_key_vars=[],
            config=config,
        )
        self.args = ProviderArgs.parse(model_args)
        self.checkpoint = shared_checkpoint(
            self.args.model, self.args.checkpoint_dir, self.args.devices
        )
        if self.args.adapter_dir is not None:  # fail here, not on the first sample
            with self.checkpoint.lock:
                apply_adapter(self.checkpoint, self.args.adapter_dir)
        self._rng: torch.Generator | None = None
        self._batcher = _Batcher(self._generate)

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> tuple[ModelOutput, ModelCall]:
        if tools:
            raise CkError("the torchtune provider does not support tool calling")
        started = time.monotonic()
        prompt = prompt_tokens(self.checkpoint.tokenizer, [_torchtune_message(m) for m in input])
        decoding = self._decoding(config, len(prompt))
        generation = await self._batcher.submit(
            _Request(prompt, decoding), config.max_connections or self.max_connections()
        )
        text = self.checkpoint.tokenizer.decode(generation.tokens)
        stopped = generation.stopped
        for stop in config.stop_seqs or []:
            if stop in text:
                text, stopped = text[: text.index(stop)], True
        output = ModelOutput(
            model=self.model_name,
            choices=[
                ChatCompletionChoice(
                    message=ChatMessageAssistant(
                        content=text, model=self.model_name, source="generate"
                    ),
                    stop_reason="stop" if stopped else "max_tokens",
                )
            ],
            usage=ModelUsage(
                input_tokens=len(prompt),
                output_tokens=len(generation.tokens),
                total_tokens=len(prompt) + len(generation.tokens),
            ),
            time=time.monotonic() - started,
        )
        call = ModelCall.create(
            request={
                "prompt_tokens": prompt,
                "max_new_tokens": decoding.max_new_tokens,
                "temperature": decoding.temperature,
                "top_k": decoding.top_k,
                "seed": config.seed,
            },
            response={"tokens": generation.tokens, "text": text, "stopped": stopped},
        )
        return output, call

    def _decoding(self, config: GenerateConfig, prompt_length: int) -> Decoding:
        """Greedy unless sampling was asked for with a non-zero temperature; the answer fits
        in the model's context."""
        room = self.checkpoint.model.max_seq_len - prompt_length
        if room <= 0:
            raise CkError(
                f"a prompt of {prompt_length} tokens leaves no room in the model's "
                f"context of {self.checkpoint.model.max_seq_len} tokens"
            )
        max_new = min(config.max_tokens or self.max_tokens(), room)
        if not self.args.do_sample or config.temperature == 0:
            return Decoding(max_new)
        if self._rng is None:
            self._rng = torch.Generator(self.checkpoint.device)
            if config.seed is None:
                self._rng.seed()
            else:
                self._rng.manual_seed(config.seed)
        return Decoding(
            max_new, config.temperature if config.temperature is not None else 1.0, config.top_k
        )

    def _generate(self, prompts: list[list[int]], decoding: Decoding) -> list[Generation]:
        with self.checkpoint.lock:  # the weights are this provider's adapter's while it runs
            apply_adapter(self.checkpoint, self.args.adapter_dir)
            return generate(self.checkpoint, prompts, decoding, rng=self._rng)

    def max_tokens(self) -> int:
        """New tokens when the evaluation sets no ``max_tokens`` (inspect's own default)."""
        return DEFAULT_MAX_NEW_TOKENS

    def max_connections(self) -> int:
        """Effectively the batch size."""
        return 32

    def connection_key(self) -> str:
        return f"{self.args.checkpoint_dir}|{self.args.adapter_dir}"

    def close(self) -> None:
        """Drop this provider's hold on the model; the process keeps it for the next target
        that shares it (see the module docstring)."""
        del self.checkpoint


def _torchtune_message(message: ChatMessage) -> Message:
    """An inspect message as the torchtune message training tokenized (text only)."""
    if message.role == "tool":
        raise CkError("the torchtune provider does not support tool calling")
    other = (
        set()
        if isinstance(message.content, str)
        else {content.type for content in message.content} - {"text"}
    )
    if other:
        raise CkError(
            f"the torchtune provider takes text only, not {', '.join(sorted(other))} "
            f"(in a {message.role} message)"
        )
    return Message(role=message.role, content=message.text)
