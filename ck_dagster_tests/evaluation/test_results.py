"""results.json: adopted only while spec, checkpoints and logs are as the job left them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ck_dagster.errors import CkError
from ck_dagster.evaluation.results import (
    EvalOutcome,
    EvalResults,
    checkpoint_fingerprint,
    checkpoint_fingerprints,
    is_current,
    read_results,
    result_problems,
    results_path,
)
from ck_dagster.evaluation.spec import EvalSpec, eval_spec_for
from ck_dagster_tests.evaluation.tiny_experiment import plan_run

MATRIX = """
evaluation:
  max_tokens: 12
  tasks: [{name: capitalization}]
  matrix: [{run: tuned, epochs: [0, 1]}]
"""


def finished(spec: EvalSpec, **changes: object) -> EvalResults:
    """Results as a job that scored every test row of every pair would write them."""
    outcomes = []
    for task, label in spec.expected_logs():
        log = spec.log_dir(task, label) / "run.eval"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("log")
        outcomes.append(
            EvalOutcome(
                **{
                    "task": task,
                    "label": label,
                    "status": "success",
                    "samples": spec.data.rows,
                    "completed": spec.data.rows,
                    "metrics": {"match": {"accuracy": 0.5, "stderr": 0.05}},
                    "log": str(log.relative_to(spec.run_dir)),
                    **changes,
                }
            )
        )
    return EvalResults(
        partition_key=spec.partition_key,
        spec_version=spec.version,
        checkpoints=checkpoint_fingerprints(spec),
        evaluations=outcomes,
        started="s",
        finished="f",
    )


@pytest.fixture
def spec(experiment: Callable[..., Path]) -> EvalSpec:
    """A spec whose two epoch folders exist (holding a stand-in weights file)."""
    spec = eval_spec_for(plan_run(experiment(evaluation=MATRIX), "tuned"))
    for target in spec.targets:
        Path(target.path).mkdir(parents=True)
        (Path(target.path) / "model.safetensors").write_bytes(b"w" * 10)
    return spec


def test_current_until_spec_checkpoint_or_log_changes(
    spec: EvalSpec, experiment: Callable[..., Path]
) -> None:
    run_dir = Path(spec.run_dir)
    assert read_results(run_dir) is None and not is_current(run_dir, spec)
    finished(spec).write(run_dir)
    assert read_results(run_dir) == finished(spec)
    assert is_current(run_dir, spec)

    other = eval_spec_for(plan_run(experiment(evaluation=MATRIX.replace("12", "8")), "tuned"))
    assert not is_current(run_dir, other)

    weights = Path(spec.targets[1].path) / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert not is_current(run_dir, spec)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert is_current(run_dir, spec)

    (run_dir / finished(spec).evaluations[0].log).unlink()  # type: ignore[operator]
    assert not is_current(run_dir, spec)


def test_failed_or_unreadable_results_are_never_current(spec: EvalSpec) -> None:
    run_dir = Path(spec.run_dir)
    finished(spec, errors=1, error="boom").write(run_dir)
    assert not is_current(run_dir, spec)
    results_path(run_dir).write_text("{not json")
    assert not is_current(run_dir, spec)
    with pytest.raises(CkError, match="results.json: not readable"):
        read_results(run_dir)


def test_fingerprint_follows_names_sizes_and_mtimes_but_not_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.safetensors").write_bytes(b"12")
    before = checkpoint_fingerprint(tmp_path)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x").write_text("x")
    assert checkpoint_fingerprint(tmp_path) == before
    (tmp_path / "sub" / "a.safetensors").write_bytes(b"123")
    assert checkpoint_fingerprint(tmp_path) != before
    assert checkpoint_fingerprint(tmp_path / "gone") == "missing"


def test_problems_name_the_pair_and_what_is_wrong(spec: EvalSpec) -> None:
    assert result_problems(finished(spec), spec) == []
    results = finished(spec)
    broken = EvalResults(
        **{
            **results.model_dump(),
            "evaluations": [
                results.evaluations[0].model_copy(
                    update={"errors": 2, "completed": 98, "error": "prompt too long"}
                )
            ],
        }
    )
    assert result_problems(broken, spec) == [
        "capitalization on epoch_0: 2 of 100 samples errored (first: prompt too long)",
        "capitalization on epoch_0: 98 samples scored, but the test split has 100 rows",
        "capitalization on epoch_1: not evaluated",
    ]
    failed = finished(spec, status="error", error="model did not load")
    assert (
        result_problems(failed, spec)[0]
        == "capitalization on epoch_0: evaluation error: model did not load"
    )
