"""Property-based tests (hypothesis, derandomized so CI sees the same examples every run):
generated YAML, experiment files and data are accepted or refused cleanly, nothing is written
on refusal, every job script parses and quotes every user value, and user text trains as
written."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torchtune import config as tune_config

from ck_dagster.cli import main
from ck_dagster.experiment.data import TRAINING_NEEDS, missing_rows
from ck_dagster.experiment.data_file import data_file_problems
from ck_dagster.experiment.yaml_lines import load_yaml
from ck_dagster.finetune.merge import ProvenancedConfig, Source
from ck_dagster.finetune.plan import written_config
from ck_dagster_tests.fixtures.dagster import EXAMPLES


def fuzz(examples: int) -> settings:
    """Deterministic examples (the same in CI every run), no timing, nothing kept on disk."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


#: text as hostile as it gets: controls, quotes, shell and OmegaConf syntax, line separators.
HOSTILE_CHARACTERS = st.sampled_from(
    list("\n\t\r\x00\x1b\x7f\x85\u2028'\"`$(){}[]\\;&|#%*:,!?-~ ") + ["${", "$(", "\\${"]
)
TEXT = st.one_of(
    st.text(max_size=30),
    st.lists(st.one_of(HOSTILE_CHARACTERS, st.text(max_size=4)), max_size=8).map("".join),
)
SCALARS = st.one_of(
    TEXT,
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.booleans(),
    st.none(),
    st.dates(),
    st.binary(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)


@fuzz(200)
@given(
    st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    "a: ",
                    "- ",
                    "[",
                    "]",
                    "{",
                    "}",
                    "&x ",
                    "*x ",
                    "!!int ",
                    "!!binary ",
                    "!!timestamp ",
                    "? ",
                    "\n",
                    "  ",
                    "'",
                    '"',
                    "#",
                    "1e309",
                    "2026-13-45",
                    "\x00",
                    "\x1b",
                ]
            ),
            max_size=40,
        ).map("".join),
    )
)
@example("!!int")  # an empty tagged scalar: PyYAML raised IndexError
def test_any_text_loads_or_becomes_problems(text: str) -> None:
    loaded = load_yaml(text)
    assert (
        loaded.data is None
        or not loaded.problems
        or all("duplicate key" in p.message for p in loaded.problems)
    )


#: a folder name every shell-quoting fault would show on: command substitution, quotes,
#: comments, separators, globs, spaces.
HOSTILE_FOLDER = "runs $(touch owned) `touch owned` 'a' \"b\" #c ;d &e *f ~g"


def base_experiment(folder: Path) -> dict[str, Any]:
    """One fine-tuned run on the built-in defaults and a control: quick to plan."""
    return {
        "experiment": {"name": "fuzz", "dir": str(folder / HOSTILE_FOLDER)},
        "controls": {"epochs": 1, "prompt": "Capitalize: {input}\n", "system_prompt": "S"},
        "models": {"base": [{"name": "tiny-llama", "path": str(folder / "model")}]},
        "data": {"training": {"path": str(EXAMPLES / "data" / "words_capitalization.json")}},
        "runs": [
            {
                "name": "tuned",
                "type": "fine-tuned",
                "model": "tiny-llama",
                "parameters": {"lora_rank": 4},
                "compute": {"time": "1:00:00"},
            },
            {"name": "base", "type": "control", "model": "tiny-llama"},
        ],
        "evaluation": {"tasks": [{"name": "capitalization"}]},
    }


#: text any field may hold: no control characters, but quotes, shell and OmegaConf syntax.
PLAIN = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=12)
#: a folder or file name: PLAIN without `/`, `%` and `\\`.
COMPONENT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="/%\\"),
    min_size=1,
    max_size=12,
)
NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,20}", fullmatch=True)
SLURM_VALUE = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:,|&*\[\]-]{0,10}", fullmatch=True)


def sometimes_hostile(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value the field takes, or (a third of the time) any value at all."""
    return st.one_of(plausible, plausible, VALUES)


#: where a generated value goes (the fields that reach names, paths, scripts and configs),
#: and what goes there.
PLACES: dict[tuple[Any, ...], st.SearchStrategy[Any]] = {
    ("experiment", "name"): sometimes_hostile(NAME),
    ("experiment", "dir"): sometimes_hostile(COMPONENT.map(lambda c: f"/tmp/ck-fuzz/{c}")),
    ("controls", "prompt"): sometimes_hostile(st.builds("{}{{input}}{}".format, PLAIN, TEXT)),
    ("controls", "system_prompt"): sometimes_hostile(PLAIN),
    ("controls", "lr"): sometimes_hostile(st.floats(1e-8, 1)),
    ("controls", "seed"): sometimes_hostile(st.integers(0, 2**32 - 1)),
    ("controls", "optimizer.weight_decay"): sometimes_hostile(st.floats(0, 1)),
    ("controls", "tokenizer"): VALUES,
    ("controls", "output_dir"): VALUES,
    ("controls", "dataset.data_files"): VALUES,
    ("runs", 0, "name"): sometimes_hostile(NAME),
    ("runs", 0, "parameters", "lora_rank"): sometimes_hostile(st.integers(1, 64)),
    ("runs", 0, "compute", "time"): sometimes_hostile(
        st.from_regex(r"[0-9]{1,2}:[0-5][0-9]:[0-5][1-9]", fullmatch=True)
    ),
    ("runs", 0, "compute", "mem"): sometimes_hostile(
        st.from_regex(r"[1-9][0-9]{0,3}[MG]", fullmatch=True)
    ),
    ("runs", 0, "compute", "partition"): sometimes_hostile(SLURM_VALUE),
    ("runs", 0, "compute", "account"): sometimes_hostile(SLURM_VALUE),
    ("models", "base", 0, "path"): sometimes_hostile(COMPONENT.map(lambda c: f"/models/{c}")),
    ("evaluation", "temperature"): sometimes_hostile(st.floats(0, 2)),
    ("evaluation", "seed"): sometimes_hostile(st.integers(0, 2**32 - 1)),
}
EDITS = st.lists(
    st.sampled_from(sorted(PLACES, key=str)).flatmap(
        lambda place: st.tuples(st.just(place), PLACES[place])
    ),
    min_size=1,
    max_size=3,
)


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


@fuzz(60)
@given(edits=EDITS)
def test_generated_experiment_files_are_written_safely_or_refused_cleanly(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    edits: list[tuple[tuple[Any, ...], Any]],
) -> None:
    monkeypatch.setenv("CK_JOB_VENV", "none")
    folder = tmp_path / "case"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    data = base_experiment(folder)
    for place, value in edits:
        _set(data, place, value)
    file = folder / "experiment.yaml"
    file.write_text(yaml.safe_dump(data, allow_unicode=False))
    out = folder / "out"

    # anything but CkError would raise; the SLURM preflight is a process, not for a unit test
    code = main(["dry-run", str(file), "--out", str(out), "--no-preflight"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code != 0:
        assert code == 2 and not out.exists() and not (folder / "runs").exists(), err
        assert f"{file}: " in err and "nothing was registered or written" in err
        return
    experiment_dir = Path(data["experiment"]["dir"])
    for script in out.glob("*/finetune.slurm"):
        subprocess.run(["bash", "-n", str(script)], check=True)
        run_dir = experiment_dir.expanduser() / script.parent.name
        words = [
            shlex.split(line[len("#SBATCH ") :])
            for line in script.read_text().splitlines()
            if line.startswith("#SBATCH ")
        ]
        assert all(len(option) == 1 for option in words)  # each value quoted as one word
        options = dict(option[0].split("=", 1) for option in words if "=" in option[0])
        assert options["--chdir"] == str(run_dir)
        assert options["--job-name"] == f"ck:{data['experiment']['name']}/{run_dir.name}:train"
        (cd,) = [line for line in script.read_text().splitlines() if line.startswith("cd ")]
        assert shlex.split(cd) == ["cd", str(run_dir)]
        read_back = OmegaConf.load(script.with_name("finetune.yaml"))
        prompt = data["controls"].get("prompt")
        if isinstance(prompt, str):
            assert (
                tune_config.instantiate(
                    OmegaConf.create(
                        {"_component_": "builtins.dict", "prompt": read_back.dataset.prompt}
                    )
                )["prompt"]
                == prompt
            )


@fuzz(200)
@given(TEXT)
def test_user_text_resolves_to_itself_however_torchtune_reads_it(text: str) -> None:
    config = ProvenancedConfig()
    config.set("note", text, Source("controls", "controls.note"))
    config.set(
        "dataset",
        {"_component_": "builtins.dict", "prompt": text},
        Source("controls", "controls.dataset"),
    )
    written = OmegaConf.create(written_config(config))
    assert written.note == text  # a top-level value the recipe reads itself
    assert tune_config.instantiate(written.dataset)["prompt"] == text  # a component's


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["train", "test", "input", "output", "x"]), inner, max_size=3
        ),
    ),
    max_leaves=10,
)


@fuzz(150)
@given(
    st.one_of(
        JSON.map(json.dumps),
        st.text(max_size=50),
        st.integers(1, 200_000).map(lambda n: "[" * n + "]" * n),
    )
)
def test_any_data_file_is_read_or_refused_with_a_reason(tmp_path: Path, text: str) -> None:
    path = tmp_path / f"data-{abs(hash(text))}.json"
    path.write_text(text)
    problems = data_file_problems(path, "input", "output") or missing_rows(path, TRAINING_NEEDS)
    assert all(message.startswith(f"data file {path}") for message, _ in problems)
    try:
        rows = json.loads(text).get("train")
    except (ValueError, RecursionError, AttributeError):
        rows = None
    if not problems:
        assert rows and all(isinstance(r, dict) for r in rows)
