"""The training parameters an experiment may set, by friendly name, and their torchtune paths.

``controls`` and ``runs[].parameters`` accept three kinds of names: a friendly name below
(``lora_rank``), a top-level key of the recipe config (``clip_grad_norm``), or a dotted torchtune
path taken as it is (``optimizer.weight_decay``).

Each friendly name has a constrained pydantic type: its ``Field(description=...)`` says what it
sets, its constraints what it accepts, and together they give the catalog's JSON schema
(:func:`json_schema`) and the table in ``docs/experiment-file.md`` (:func:`markdown_table`). A
value the type refuses is reported in the project's words, which say what the field accepts
(:func:`check_value`), not in pydantic's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

#: where a row's input goes in a prompt template.
INPUT_PLACEHOLDER = "{input}"
#: ``controls.custom_recipe``: a module path or a .py file path, nothing a shell would read.
_RECIPE_REFERENCE = TypeAdapter(Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_./-]+$")])
#: the largest seed torchtune and numpy accept (2^32 - 1).
MAX_SEED = 2**32 - 1
#: the largest LoRA rank: the hidden size of the largest model ck_dagster knows (70B: 8192).
MAX_LORA_RANK = 8192
#: the most epochs a run trains: beyond this a value is a typo, not a plan.
MAX_EPOCHS = 1000

# Strict throughout: YAML's `true` is no whole number, and a quoted "8" is text, not 8.
_WholeAboveZero = Annotated[int, Field(strict=True, gt=0)]
_WholeFromZero = Annotated[int, Field(strict=True, ge=0)]
_NumberAboveZero = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False, examples=[1e-4])]
_NumberFromZero = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
_Flag = Annotated[bool, Field(strict=True)]
_Text = Annotated[str, Field(strict=True)]


def _with_placeholder(prompt: str) -> str:
    if INPUT_PLACEHOLDER not in prompt:
        raise ValueError(f"must contain `{INPUT_PLACEHOLDER}` where each row's input goes")
    return prompt


def _epochs_named(value: Any) -> Any:
    parse_epochs(value)
    return value


#: the JSON schema of ``epochs_to_save`` (what :func:`parse_epochs` reads).
_EPOCHS_SCHEMA = {
    "anyOf": [
        {"enum": ["all", "none"]},
        {"type": "string", "pattern": r"^\s*\d+\s*(,\s*\d+\s*)*$"},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
    ],
}


@dataclass(frozen=True)
class Parameter:
    """A friendly name, the config path it sets, and the pydantic type its value must have."""

    name: str
    path: str
    adapter: TypeAdapter[Any]

    @property
    def schema(self) -> dict[str, Any]:
        """The value's JSON schema (with the ``description`` of what it sets)."""
        return self.adapter.json_schema()

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused, in the project's words (``must be ...``), or None."""
        try:
            self.adapter.validate_python(value)
        except ValidationError as exc:
            custom = [e["ctx"]["error"] for e in exc.errors() if e["type"] == "value_error"]
            return str(custom[0]) if custom else "must be " + _accepts(self.schema)
        return None

    def accepted(self) -> str:
        """What the parameter accepts, in the words a refused value is told (for the docs)."""
        return str(self.problem(_Unacceptable())).removeprefix("must be ")


class _Unacceptable:
    """A value no parameter accepts: refusing it gives the wording of what is accepted."""


def _accepts(schema: Mapping[str, Any]) -> str:
    """What a parameter's JSON schema accepts, in words: ``a whole number from 1 to 8192``."""
    if "anyOf" in schema:  # an optional value: a value of one type, or null
        [value] = [branch for branch in schema["anyOf"] if branch.get("type") != "null"]
        return _accepts(value) + ", or null"
    if "enum" in schema:
        return "one of: " + ", ".join(map(str, schema["enum"]))
    kind, examples = schema.get("type"), schema.get("examples")
    if kind == "boolean":
        return "true or false"
    if kind == "string":
        return "text (quote it in YAML)"
    if kind == "array":
        return "a list of names" + (f", e.g. [{', '.join(examples[0])}]" if examples else "")
    noun = "a whole number" if kind == "integer" else "a number"
    example = f" (e.g. {examples[0]})" if examples else ""
    why = f" ({schema['$comment']})" if "$comment" in schema else ""
    return noun + _range(schema) + example + why


def _range(schema: Mapping[str, Any]) -> str:
    """The bounds of a number's schema: ``from 1 to 8192``, ``above 0``, ``, 0 or more``."""
    low, above = schema.get("minimum"), schema.get("exclusiveMinimum")
    high, below = schema.get("maximum"), schema.get("exclusiveMaximum")
    upper = f" to {high}" if high is not None else ""
    upper += f" up to (not including) {below}" if below is not None else ""
    if low is not None:
        return f" from {low}{upper}" if upper else f", {low} or more"
    return (f" above {above}" if above is not None else "") + upper


def _parameter(name: str, path: str, kind: Any, description: str, why: str = "") -> Parameter:
    """A parameter whose value has type ``kind``; ``why`` says where a bound comes from (JSON
    schema's ``$comment``, also shown in the message that refuses a value)."""
    extra = {"$comment": why} if why else None
    described = Annotated[kind, Field(description=description, json_schema_extra=extra)]
    return Parameter(name, path, TypeAdapter(described))


_PARAMETERS = [
    _parameter(
        "lora_rank",
        "model.lora_rank",
        Annotated[int, Field(strict=True, ge=1, le=MAX_LORA_RANK)],
        "LoRA rank",
        "no model is wider",
    ),
    _parameter("lora_alpha", "model.lora_alpha", _NumberAboveZero, "LoRA alpha (default 2 x rank)"),
    _parameter(
        "lora_dropout",
        "model.lora_dropout",
        Annotated[float, Field(strict=True, ge=0, lt=1)],
        "dropout on LoRA layers",
    ),
    _parameter(
        "lora_attn_modules",
        "model.lora_attn_modules",
        Annotated[list[_Text], Field(strict=True, min_length=1, examples=[["q_proj", "v_proj"]])],
        "attention projections LoRA adapts",
    ),
    _parameter("apply_lora_to_mlp", "model.apply_lora_to_mlp", _Flag, "LoRA on MLP layers"),
    _parameter(
        "apply_lora_to_output", "model.apply_lora_to_output", _Flag, "LoRA on the output projection"
    ),
    _parameter("learning_rate", "optimizer.lr", _NumberAboveZero, "learning rate (v1's name)"),
    _parameter("lr", "optimizer.lr", _NumberAboveZero, "learning rate"),
    _parameter("weight_decay", "optimizer.weight_decay", _NumberFromZero, "weight decay"),
    _parameter(
        "num_warmup_steps",
        "lr_scheduler.num_warmup_steps",
        _WholeFromZero,
        "learning-rate warm-up steps",
    ),
    _parameter("max_seq_len", "tokenizer.max_seq_len", _WholeAboveZero, "longest tokenized row"),
    _parameter("batch_size", "batch_size", _WholeAboveZero, "rows per step per device"),
    _parameter(
        "epochs",
        "epochs",
        Annotated[int, Field(strict=True, ge=1, le=MAX_EPOCHS)],
        "passes over the training split",
    ),
    _parameter(
        "gradient_accumulation_steps",
        "gradient_accumulation_steps",
        _WholeAboveZero,
        "steps per optimizer update",
    ),
    _parameter(
        "max_steps_per_epoch",
        "max_steps_per_epoch",
        _WholeAboveZero | None,
        "cap on steps per epoch (null: no cap)",
    ),
    _parameter(
        "seed",
        "seed",
        Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)],
        "training seed",
        "torchtune's seed range",
    ),
    _parameter("log_every_n_steps", "log_every_n_steps", _WholeAboveZero, "loss logging interval"),
    _parameter(
        "save_adapter_weights_only",
        "save_adapter_weights_only",
        _Flag,
        "LoRA: save only the adapter per epoch, evaluated on the base model",
    ),
    # read by ck_dagster's recipes (ck_dagster/training/lora_recipe.py, full_recipe.py), which
    # a run trains with as soon as its config has one of these keys
    _parameter(
        "epochs_to_save",
        "epochs_to_save",
        Annotated[Any, AfterValidator(_epochs_named), Field(json_schema_extra=_EPOCHS_SCHEMA)],
        'epochs whose checkpoints are kept: "all", "none", "0,2,4" or a list',
    ),
    _parameter(
        "save_last_epoch_only",
        "save_last_epoch_only",
        _Flag,
        "keep only the last epoch's checkpoint",
    ),
    _parameter(
        "stash_adapter_weights",
        "stash_adapter_weights",
        _Flag,
        "LoRA with merged weights: move the adapter files into epoch_N/adapter_weights/",
    ),
    _parameter(
        "validation_during_training",
        "validation_during_training",
        _Flag,
        "loss on the validation split at every epoch's end",
    ),
    _parameter(
        "run_val_every_n_steps",
        "run_val_every_n_steps",
        _WholeFromZero,
        "also every N optimizer steps (0: at epochs' ends only)",
    ),
    _parameter("compile", "compile", _Flag, "torch.compile the model"),
    _parameter("dtype", "dtype", Literal["fp32", "bf16", "fp16"], "training precision"),
    _parameter("device", "device", Literal["cuda", "cpu", "mps", "xpu", "npu"], "device"),
    _parameter(
        "prompt",
        "dataset.prompt",
        Annotated[
            _Text,
            AfterValidator(_with_placeholder),
            # the schema's form of the check above, which words its refusal
            Field(json_schema_extra={"pattern": re.escape(INPUT_PLACEHOLDER)}),
        ],
        f"prompt template; `{INPUT_PLACEHOLDER}` marks where each row's input goes",
    ),
    _parameter("system_prompt", "dataset.system_prompt", _Text, "system prompt ('' for none)"),
]

#: friendly parameter names and what they set.
PARAMETERS: dict[str, Parameter] = {p.name: p for p in _PARAMETERS}


def json_schema() -> dict[str, Any]:
    """The JSON schema of the friendly parameters (``controls`` and ``runs[].parameters``; other
    keys, config keys and dotted paths, are checked against the recipe's config instead)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ck_dagster training parameters",
        "type": "object",
        "properties": {name: p.schema for name, p in PARAMETERS.items()},
    }


def markdown_table() -> str:
    """The friendly parameters as ``docs/experiment-file.md`` lists them (generated from
    :func:`json_schema`, so the document says what the checks enforce)."""
    rows = [
        f"| `{name}` | `{p.path}` | {p.schema['description']} | {p.accepted()} |"
        for name, p in PARAMETERS.items()
    ]
    return "| name | sets | what it does | accepts |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


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
    try:
        _RECIPE_REFERENCE.validate_python(value)
    except ValidationError:
        return (
            "must be a Python module path (my_pkg.my_recipe) or a .py file "
            "path, without spaces or shell characters"
        )
    return None


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
    return parameter.problem(value) if parameter else None


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
