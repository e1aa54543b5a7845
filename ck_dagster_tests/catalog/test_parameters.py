"""The parameter catalog's pydantic types: strict values, refusals in the project's words, and a
JSON schema and a documented table that say what the checks enforce."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from ck_dagster.catalog.parameters import PARAMETERS, check_value, json_schema, markdown_table

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"
REGENERATE = (
    "regenerate: python -c 'import json; from ck_dagster.catalog.parameters import json_schema; "
    "print(json.dumps(json_schema(), indent=2))' > docs/parameters.schema.json, and paste "
    "markdown_table() into docs/experiment-file.md"
)
#: values of every JSON kind, inside and outside the parameters' bounds.
SAMPLES: list[Any] = [
    *(0, 1, -1, 8, 8192, 8193, 1000, 1001, 2**32 - 1, 2**32, 0.5, 1.5, 1e-4, -1e-4),
    *(True, False, None, "", "x", "8", "a {input} b", "all", "none", "0,2,4", "0,x"),
    *("fp32", "cuda", [], [0, 2], [-1], ["q_proj", "v_proj"], [1, "x"], {"a": 1}),
]


def test_every_parameter_says_what_it_sets() -> None:
    assert all(p.schema.get("description") for p in PARAMETERS.values())


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("lora_rank", True, "must be a whole number from 1 to 8192 (no model is wider)"),
        ("batch_size", 2.0, "must be a whole number above 0"),
        ("epochs", "3", "must be a whole number from 1 to 1000"),
        ("lr", False, "must be a number above 0 (e.g. 0.0001)"),
        ("weight_decay", math.inf, "must be a number, 0 or more"),
        ("lora_dropout", 1, "must be a number from 0 up to (not including) 1"),
        ("max_steps_per_epoch", 0, "must be a whole number above 0, or null"),
        ("compile", 1, "must be true or false"),
        ("dtype", "fp8", "must be one of: fp32, bf16, fp16"),
        ("lora_attn_modules", "q_proj", "must be a list of names, e.g. [q_proj, v_proj]"),
        ("prompt", "Answer:", "must contain `{input}` where each row's input goes"),
        ("system_prompt", 7, "must be text (quote it in YAML)"),
    ],
)
def test_a_refused_value_is_told_what_the_field_accepts(
    name: str, value: Any, message: str
) -> None:
    assert check_value(name, value) == message


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_the_json_schema_accepts_what_the_checks_accept(name: str) -> None:
    validator = Draft202012Validator(json_schema()["properties"][name])
    for value in SAMPLES:
        assert validator.is_valid(value) == (check_value(name, value) is None), (name, value)


def test_the_docs_show_the_catalog_as_it_is() -> None:
    schema = json.loads((DOCS / "parameters.schema.json").read_text())
    assert schema == json_schema(), REGENERATE
    assert markdown_table() in (DOCS / "experiment-file.md").read_text(), REGENERATE
