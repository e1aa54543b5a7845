"""Hostile input produced for real (pipes, devices, symlink loops, injections): every case is a
``file:line: field: message (fix)`` refusal with exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from ck_dagster.cli import main
from ck_dagster.errors import CkError
from ck_dagster.slurm.resources import Resources
from ck_dagster.slurm.script import JobScript, check_script

MALFORMED = Path(__file__).parent / "malformed"


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A case that blocks (a FIFO read without end) fails the test instead of hanging it."""

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("reading blocked: hostile input must be refused, not read")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def experiment(example_copy: Callable[[str], Path]) -> Path:
    """A valid experiment (four fine-tuned runs and a control) in tmp."""
    return example_copy("cap_rank_sweep.yaml")


def dry_run(file: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``ck-dagster dry-run FILE --out OUT`` in this process: exit code and stderr."""
    code = main(["dry-run", str(file), "--out", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.err


def assert_refused(code: int, err: str, file: Path, expected: str, out: Path) -> None:
    """Exit 2, the expected message on a ``file:line: field:`` line, nothing written."""
    assert code == 2, err
    assert expected in err, err
    assert "nothing was registered or written" in err
    problems = err.splitlines()[1:]
    assert problems and all(line.startswith(f"  {file}") for line in problems), err
    assert not out.exists()


def edit(file: Path, old: str, new: str) -> Path:
    text = file.read_text()
    assert old in text
    file.write_text(text.replace(old, new, 1))
    return file


# -- arguments that are not regular files -------------------------------------------------------


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.yaml")
    return tmp / "pipe.yaml"


def _loop(tmp: Path) -> Path:
    (tmp / "a.yaml").symlink_to("b.yaml")
    (tmp / "b.yaml").symlink_to("a.yaml")
    return tmp / "a.yaml"


def _large(tmp: Path) -> Path:
    (tmp / "large.yaml").write_text("# " + "x" * 1_000_000 + "\n")
    return tmp / "large.yaml"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_fifo, "is a named pipe (FIFO), not a regular file"),
        (lambda tmp: tmp, "is a folder, not a file"),
        (lambda tmp: Path("/dev/zero"), "is a device, not a regular file"),
        (lambda tmp: Path("/proc/self/mem"), "cannot be read: Input/output error"),
        (_loop, "is a loop of symbolic links"),
        (_large, "is larger than 1 MB, the most that is read"),
        (lambda tmp: tmp / "missing.yaml", "not found (check the path)"),
        (lambda tmp: Path(__file__) / "x.yaml", "a part of its path is a file"),
        (lambda tmp: tmp / ("x" * 300 + ".yaml"), "has a name too long for the file system"),
    ],
    ids=[
        "fifo",
        "folder",
        "dev-zero",
        "proc-self-mem",
        "symlink-loop",
        "over-1MB",
        "missing",
        "through-a-file",
        "name-too-long",
    ],
)
def test_an_experiment_argument_that_is_not_a_readable_file_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Path], expected: str
) -> None:
    file = make(tmp_path)
    code, err = dry_run(file, tmp_path / "out", capsys)
    assert code == 2 and expected in err, err
    assert not (tmp_path / "out").exists()


def _data_fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "data.json")
    return tmp / "data.json"


def _data_loop(tmp: Path) -> Path:
    (tmp / "data.json").symlink_to("data.json")
    return tmp / "data.json"


def _data_deep(tmp: Path) -> Path:
    (tmp / "data.json").write_text('{"train": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return tmp / "data.json"


def _data_wrong_types(tmp: Path) -> Path:
    (tmp / "data.json").write_text(json.dumps({"train": [{"input": "a", "output": {"x": 1}}]}))
    return tmp / "data.json"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_data_fifo, " is a named pipe (FIFO), not a regular file"),
        (_data_loop, " is a loop of symbolic links"),
        (_data_deep, ": nested too deeply to read"),
        (_data_wrong_types, ": `train[0]` has a nested value in `output`"),
    ],
    ids=["fifo", "symlink-loop", "json-100000-deep", "wrong-types"],
)
def test_a_data_path_that_training_could_not_read_is_refused_by_dry_run(
    experiment: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    expected: str,
) -> None:
    data = make(tmp_path)
    edit(experiment, "path: data/words_capitalization.json", f"path: {data}")
    code, err = dry_run(experiment, tmp_path / "out", capsys)
    assert_refused(
        code, err, experiment, f"data.training.path: data file {data}{expected}", tmp_path / "out"
    )


def test_a_task_script_in_a_symlink_loop_is_refused(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "task.py"
    script.symlink_to("task.py")
    edit(experiment, "description: exact match", f"script: {script}\n      description: x")
    code, err = dry_run(experiment, tmp_path / "out", capsys)
    assert_refused(
        code, err, experiment, f"task script {script} is a loop of symbolic links", tmp_path / "out"
    )


def test_a_file_name_with_a_newline_is_refused_before_anything_is_written(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = experiment.with_name("x\nexperiment: {injected: true}\n.yaml")
    experiment.rename(hostile)
    code, err = dry_run(hostile, tmp_path / "out", capsys)
    assert code == 2 and "the file's path contains control characters (\\n)" in err, err
    assert "\nexperiment: {injected" not in err
    assert not (tmp_path / "out").exists()


def test_terminal_escapes_in_a_file_are_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = MALFORMED / "escape_in_key.yaml"
    code, err = dry_run(file, tmp_path / "out", capsys)
    assert code == 2 and "\\x1b" in err
    assert "\x1b" not in err


# -- what is written ----------------------------------------------------------------------------


def test_user_text_cannot_inject_into_the_job_script(
    experiment: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's injection: a folder name with ``$(...)`` and quotes stays text."""
    monkeypatch.setenv("CK_JOB_VENV", "none")
    owned = tmp_path / "owned"
    folder = tmp_path / f"x$(touch {owned})'\"`touch {owned}`;"
    edit(
        experiment,
        f"dir: {tmp_path / 'runs' / 'cap_rank_sweep'}",
        f"dir: {json.dumps(str(folder))}",
    )
    out = tmp_path / "out"
    code, err = dry_run(experiment, out, capsys)
    assert code == 0, err
    script = out / "rank4" / "finetune.slurm"
    subprocess.run(["bash", "-n", str(script)], check=True)
    header = [
        shlex.split(line[len("#SBATCH ") :])[0]
        for line in script.read_text().splitlines()
        if line.startswith("#SBATCH ")
    ]
    assert f"--chdir={folder / 'rank4'}" in header
    assert f"--output={folder / 'rank4' / 'artifacts' / 'slurm-%j.out'}" in header
    (folder / "rank4").mkdir(parents=True)
    # run it for real (without `tune` on PATH it stops at the command): nothing is executed
    subprocess.run(
        ["bash", str(script)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert not owned.exists()


def test_a_value_sbatch_cannot_quote_is_refused_by_the_script_writer() -> None:
    job = JobScript(
        job_name="ck:x/y:train",
        workdir=Path("/tmp/a\\b"),
        log_path=Path("/tmp/l"),
        resources=Resources(mem="1G", cpus=1, gpus=0),
        command=["true"],
    )
    with pytest.raises(CkError, match=r"#SBATCH --chdir cannot hold"):
        job.render()


def test_a_script_that_does_not_parse_is_never_returned() -> None:
    with pytest.raises(CkError, match="bash -n"):
        check_script("#!/bin/bash\nif true; then\n")


# -- dry-run writes all or nothing --------------------------------------------------------------


def test_dry_run_writes_nothing_when_one_run_cannot_be_written(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "rank8").write_text("a file where a run's folder goes")
    code, err = dry_run(experiment, out, capsys)
    assert code == 2 and f"{out / 'rank8'} is in the way" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["rank8"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no stage left


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_dry_run_out_that_is_or_is_under_a_file_is_refused(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    out = blocker if where == "a-file" else blocker / "out"
    code, err = dry_run(experiment, out, capsys)
    assert code == 2 and f"{blocker} is in the way" in err, err
    assert blocker.read_text() == "keep me"


def test_dry_run_checks_the_data_as_register_does(
    experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train_only.json"
    data.write_text(json.dumps({"train": [{"input": "a", "output": "A"}]}))
    edit(experiment, "path: data/words_capitalization.json", f"path: {data}")
    code, err = dry_run(experiment, tmp_path / "out", capsys)
    assert_refused(code, err, experiment, "has no rows in a `test` list", tmp_path / "out")


# -- registering --------------------------------------------------------------------------------


def test_one_experiment_name_in_two_files_of_one_command_registers_nothing(
    dagster_home: Path, example_copy: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    first = example_copy("cap_rank_sweep.yaml")
    second = first.with_name("copy.yaml")
    second.write_text(first.read_text())
    assert main(["register", str(first), str(second)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{second}: experiment `cap_rank_sweep` is also in {first}" in err
    with DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions("runs") == []


# -- bounds -------------------------------------------------------------------------------------

# VmHWM, the peak of this process's own memory (ru_maxrss would carry the parent's over exec)
_MEMORY_PROBE = """
import re, sys
from pathlib import Path
from ck_dagster.experiment.load import read_experiment
for path in sys.argv[1:]:
    reading = read_experiment(path)
    assert reading.problems, path
print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def test_reading_any_file_up_to_1_mb_stays_under_200_mb(tmp_path: Path) -> None:
    """Peak memory (max RSS) of a process reading the worst 1 MB files: aliases, values,
    nesting, one comment or string, many keys."""
    size = 999_000
    bomb = "a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)
    )
    texts = {
        "alias_bomb": bomb,
        "comment": "# " + "x" * size,
        "string": "a: '" + "x" * size + "'",
        "flow": "a: [" + "0," * (size // 2 - 4) + "0]",
        "keys": "".join(f"k{i}: {i}\n" for i in range(size // 14)),
        "block_nesting": "".join(" " * i + f"k{i}:\n" for i in range(1300))[:size],
        "values_just_allowed": "runs:\n" + "- 1\n" * 19_990,
    }
    files = []
    for name, text in texts.items():
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(text[:size])
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    peak_mb = int(result.stdout.split()[-1]) / 1024
    print(f"peak RSS reading {len(files)} hostile 1 MB files: {peak_mb:.0f} MB")
    assert peak_mb < 200
