"""``ck-dagster demo``: a real experiment on this machine, end to end, in a few minutes.

It makes the tiny model and a capitalization dataset, registers the demo experiment, and
materializes the whole graph with Dagster's own CLI on a local SQLite instance and the local
launcher; then it prints the report and how to open the UI. Everything it made is reused on
the next run: configs are unchanged, checkpoints adopted, evaluations current.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from ck_dagster.errors import CkError
from ck_dagster.fileio import atomic_write_bytes
from ck_dagster.settings import child_environment

EXPERIMENT_FILE = "tiny_capitalization.yaml"
_DAGSTER_LINE = re.compile(r" - dagster - (INFO|WARNING|ERROR|CRITICAL) - [^ ]+ - [0-9a-f-]{36} - "
                           r"(?:[^ ]+ - )?(.*)$")


def run_demo(folder: Path, home: Path, echo: Callable[[str], object] = print) -> Path:
    """Run the demo in ``folder`` with the Dagster instance in ``home``; the report's path."""
    from ck_dagster.assets.instance import ensure_dagster_home

    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    file = _experiment_file(folder)
    _make_model_and_data(folder, echo)
    ensure_dagster_home(home)
    env = child_environment({"DAGSTER_HOME": str(home), "CK_LAUNCHER": "local",
                             "CK_LOCAL_JOBS_DIR": str(folder / "local-jobs")})
    _run([_command("ck-dagster"), "register", str(file)], env, echo)

    from ck_dagster.experiment.load import load_experiment

    experiment = load_experiment(file)
    keys = [experiment.partition_key(run) for run in experiment.runs]
    echo(f"\n== training and evaluating {len(keys)} runs (local launcher) ==")
    _materialize(["recipe_config,run_config,checkpoint,eval_log", "--partition-range",
                  f"{keys[0]}...{keys[-1]}"], env, echo)
    _materialize(["experiment_report", "--partition", experiment.name], env, echo)
    report = experiment.dir / "report"
    echo(f"\n== report ({report}) ==\n")
    echo((report / "report.md").read_text())
    echo(f"plot: {report / 'scores.png'}\nrun folders: {experiment.dir}\n"
         f"demo finished in {time.monotonic() - started:.0f} s. Open the UI on this instance:\n"
         f"  DAGSTER_HOME={home} {_command('ck-dagster')} ui   (or: make ui)")
    return report


def _experiment_file(folder: Path) -> Path:
    """The demo experiment, copied beside the model and data it names."""
    file = folder / EXPERIMENT_FILE
    text = resources.files("ck_dagster.demo").joinpath(EXPERIMENT_FILE).read_text()
    if not file.exists():
        file.write_text(text)
    elif file.read_text() != text:
        raise CkError(f"{file} was edited: the demo only runs its own experiment. Move your "
                      "copy elsewhere (and register it with ck-dagster register), or delete it")
    return file


def _make_model_and_data(folder: Path, echo: Callable[[str], object]) -> None:
    """Copy the tiny model and data into ``folder``, made once per machine in the cache."""
    from ck_dagster.tiny import built_data, built_model, model_cache

    model, data = folder / "models" / "tiny-llama", folder / "data" / "capitalization.json"
    if not (model / "config.json").exists():
        if (model_cache() / "config.json").exists():
            echo(f"== the tiny model: made on this machine before, copied from {model_cache()} ==")
        else:
            echo("== making the tiny model (pre-training it to echo words, on CPU, once per "
                 f"machine: kept in {model_cache()}) ==")
        _copy_folder(built_model(), model)
    if not data.exists():
        atomic_write_bytes(data, built_data().read_bytes())
    echo(f"model: {model}\ndata: {data}")


def _copy_folder(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (replacing a half-made one): copied beside, then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _materialize(selection: list[str], env: dict[str, str],
                 echo: Callable[[str], object]) -> None:
    _run([_command("dagster"), "asset", "materialize", "-m", "ck_dagster", "--select",
          *selection], env, echo, dagster_output=True)


def _run(command: list[str], env: dict[str, str], echo: Callable[[str], object],
         dagster_output: bool = False) -> None:
    """Run a command, showing its output (Dagster's: the INFO lines, without the prefix)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        if not dagster_output:
            echo(line)
        elif (match := _DAGSTER_LINE.search(line)) and "LOGS_CAPTURED" not in line:
            echo(("" if match.group(1) == "INFO" else match.group(1) + ": ") + match.group(2))
    if process.wait() != 0:
        raise CkError(f"{' '.join(command[:4])} ... failed (exit {process.returncode}):\n"
                      + "\n".join(tail))


def _command(name: str) -> str:
    """A command installed beside this Python (the venv's), else from PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name) or name
