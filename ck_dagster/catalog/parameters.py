"""The training parameters an experiment may set, by friendly name, and their torchtune paths.

``controls`` and ``runs[].parameters`` accept three kinds of names: a friendly name below
(``lora_rank``), a top-level key of the recipe config (``clip_grad_norm``), or a dotted torchtune
path taken as it is (``optimizer.weight_decay``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: where a row's input goes in a prompt template.
INPUT_PLACEHOLDER = "{input}"
_RECIPE_REFERENCE = re.compile(r"^[A-Za-z0-9_./-]+$")
#: the largest seed torchtune and numpy accept (2^32 - 1).
MAX_SEED = 2**32 - 1
#: the largest LoRA rank: the hidden size of the largest model ck_dagster knows (70B: 8192).
MAX_LORA_RANK = 8192
#: the most epochs a run trains: beyond this a value is a typo, not a plan.
MAX_EPOCHS = 1000


@dataclass(frozen=True)
class Parameter:
    """A friendly name, the config path it sets, and how its value is checked."""

    name: str
    path: str
    check: Callable[[Any], str | None]
    doc: str


def _positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return None if ok else "must be a whole number above 0"


def _int_in(low: int, high: int, why: str = "") -> Callable[[Any], str | None]:
    """A whole number from ``low`` to ``high``; ``why`` says where the bound comes from."""

    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return (
            None
            if ok
            else f"must be a whole number from {low} to {high}" + (f" ({why})" if why else "")
        )

    return check


def _non_negative_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else "must be a whole number, 0 or more"


def _optional_positive_int(value: Any) -> str | None:
    return None if value is None else _positive_int(value)


def _positive_number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
    return None if ok else "must be a number above 0 (e.g. 1e-4)"


def _non_negative_number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf
    return None if ok else "must be a number, 0 or more"


def _fraction(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
    return None if ok else "must be a number from 0 up to (not including) 1"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be text (quote it in YAML)"


def _prompt(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be text (quote it in YAML)"
    return (
        None
        if INPUT_PLACEHOLDER in value
        else f"must contain `{INPUT_PLACEHOLDER}` where each row's input goes"
    )


def _names(value: Any) -> str | None:
    ok = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    return None if ok else "must be a list of module names, e.g. [q_proj, v_proj]"


def _epochs(value: Any) -> str | None:
    try:
        parse_epochs(value)
    except ValueError as exc:
        return str(exc)
    return None


def parse_epochs(value: Any) -> tuple[int, ...] | None:
    """``epochs_to_save`` as the epochs it names (numbered from 0): None for ``"all"``, () for
    ``"none"``; ``"0,2,4"`` and ``[0, 2, 4]`` both give (0, 2, 4). ValueError says why not."""
    if value == "all":
        return None
    if value == "none":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(items, list) or not items:
            raise ValueError
        epochs = [int(str(item).strip()) if not isinstance(item, bool) else -1 for item in items]
    except ValueError:
        epochs = [-1]
    if min(epochs) < 0:
        raise ValueError(
            'must be "all", "none", epoch numbers from 0 as "0,2,4", or a list [0, 2, 4]'
        )
    return tuple(sorted(set(epochs)))


def check_recipe_reference(value: Any) -> str | None:
    """Why ``value`` is no ``controls.custom_recipe`` (a module path or .py file), or None."""
    ok = isinstance(value, str) and bool(_RECIPE_REFERENCE.match(value))
    return (
        None
        if ok
        else (
            "must be a Python module path (my_pkg.my_recipe) or a .py file "
            "path, without spaces or shell characters"
        )
    )


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of: {', '.join(choices)}"

    return check


_PARAMETERS = [
    Parameter(
        "lora_rank", "model.lora_rank", _int_in(1, MAX_LORA_RANK, "no model is wider"), "LoRA rank"
    ),
    Parameter("lora_alpha", "model.lora_alpha", _positive_number, "LoRA alpha (default 2 x rank)"),
    Parameter("lora_dropout", "model.lora_dropout", _fraction, "dropout on LoRA layers"),
    Parameter("lora_attn_modules", "model.lora_attn_modules", _names, "attention projections"),
    Parameter("apply_lora_to_mlp", "model.apply_lora_to_mlp", _boolean, "LoRA on MLP layers"),
    Parameter(
        "apply_lora_to_output",
        "model.apply_lora_to_output",
        _boolean,
        "LoRA on the output projection",
    ),
    Parameter("learning_rate", "optimizer.lr", _positive_number, "learning rate (v1's name)"),
    Parameter("lr", "optimizer.lr", _positive_number, "learning rate"),
    Parameter("weight_decay", "optimizer.weight_decay", _non_negative_number, "weight decay"),
    Parameter(
        "num_warmup_steps",
        "lr_scheduler.num_warmup_steps",
        _non_negative_int,
        "learning-rate warm-up steps",
    ),
    Parameter("max_seq_len", "tokenizer.max_seq_len", _positive_int, "longest tokenized row"),
    Parameter("batch_size", "batch_size", _positive_int, "rows per step per device"),
    Parameter("epochs", "epochs", _int_in(1, MAX_EPOCHS), "passes over the training split"),
    Parameter(
        "gradient_accumulation_steps",
        "gradient_accumulation_steps",
        _positive_int,
        "steps per optimizer update",
    ),
    Parameter(
        "max_steps_per_epoch",
        "max_steps_per_epoch",
        _optional_positive_int,
        "cap on steps per epoch (null: no cap)",
    ),
    Parameter("seed", "seed", _int_in(0, MAX_SEED, "torchtune's seed range"), "training seed"),
    Parameter("log_every_n_steps", "log_every_n_steps", _positive_int, "loss logging interval"),
    Parameter(
        "save_adapter_weights_only",
        "save_adapter_weights_only",
        _boolean,
        "LoRA: save only the adapter per epoch, evaluated on the base model",
    ),
    # read by ck_dagster's recipes (ck_dagster/training/lora_recipe.py, full_recipe.py), which
    # a run trains with as soon as its config has one of these keys
    Parameter(
        "epochs_to_save",
        "epochs_to_save",
        _epochs,
        'epochs whose checkpoints are kept: "all", "none", "0,2,4" or a list',
    ),
    Parameter(
        "save_last_epoch_only",
        "save_last_epoch_only",
        _boolean,
        "keep only the last epoch's checkpoint",
    ),
    Parameter(
        "stash_adapter_weights",
        "stash_adapter_weights",
        _boolean,
        "LoRA with merged weights: move the adapter files into epoch_N/adapter_weights/",
    ),
    Parameter(
        "validation_during_training",
        "validation_during_training",
        _boolean,
        "loss on the validation split at every epoch's end",
    ),
    Parameter(
        "run_val_every_n_steps",
        "run_val_every_n_steps",
        _non_negative_int,
        "also every N optimizer steps (0: at epochs' ends only)",
    ),
    Parameter("compile", "compile", _boolean, "torch.compile the model"),
    Parameter("dtype", "dtype", _one_of("fp32", "bf16", "fp16"), "training precision"),
    Parameter("device", "device", _one_of("cuda", "cpu", "mps", "xpu", "npu"), "device"),
    Parameter("prompt", "dataset.prompt", _prompt, "prompt template with {input}"),
    Parameter("system_prompt", "dataset.system_prompt", _text, "system prompt ('' for none)"),
]

#: friendly parameter names and what they set.
PARAMETERS: dict[str, Parameter] = {p.name: p for p in _PARAMETERS}

#: control keys that are not training parameters.
CONTROL_KEYS = ("base_recipe", "custom_recipe")
#: config keys only ck_dagster's recipes read: a config with any of them trains with those.
CK_RECIPE_KEYS = (
    "epochs_to_save",
    "save_last_epoch_only",
    "stash_adapter_weights",
    "validation_during_training",
    "run_val_every_n_steps",
)


def config_path(name: str) -> str:
    """The dotted config path a parameter name sets (friendly names mapped, others as given)."""
    parameter = PARAMETERS.get(name)
    return parameter.path if parameter else name


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is wrong for friendly parameter ``name``, or None when it is fine."""
    parameter = PARAMETERS.get(name)
    return parameter.check(value) if parameter else None


def is_known_name(name: str, base_config: Mapping[str, Any]) -> bool:
    """Whether ``name`` is a friendly name, a top-level config key or a dotted path into one."""
    if name in PARAMETERS:
        return True
    head = name.split(".", 1)[0]
    return head in base_config and (name == head or isinstance(base_config[head], Mapping))


def kept_epochs(config: Mapping[str, Any]) -> tuple[int, ...]:
    """The epochs a config's training keeps, numbered from 0 (what ck_dagster's recipes save
    and what adoption and evaluation expect)."""
    epochs = int(config.get("epochs", 1))
    if config.get("save_last_epoch_only"):
        return (epochs - 1,)
    listed = parse_epochs(config.get("epochs_to_save", "all"))
    return tuple(range(epochs)) if listed is None else tuple(e for e in listed if e < epochs)
