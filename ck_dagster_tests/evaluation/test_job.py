"""The eval job end to end: real checkpoints from ``tune run``, real inspect-ai, results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from inspect_ai.log import read_eval_log

from ck_dagster.evaluation.job import main, run_evaluation
from ck_dagster.evaluation.results import is_current, read_results, result_problems
from ck_dagster.evaluation.spec import EvalSpec, eval_spec_for
from ck_dagster.finetune.plan import RunPlan
from ck_dagster_tests.evaluation.tiny_experiment import EPOCHS, plan_run

LAST = f"epoch_{EPOCHS - 1}"


def capitalized_share(spec: EvalSpec, task: str, label: str) -> float:
    """Share of answers that start with a capital letter (what fine-tuning teaches at once)."""
    results = read_results(Path(spec.run_dir))
    assert results is not None
    outcome = results.outcome(task, label)
    assert outcome is not None and outcome.log is not None
    samples = read_eval_log(str(Path(spec.run_dir) / outcome.log)).samples or []
    return sum(s.output.completion[:1].isupper() for s in samples) / len(samples)


@pytest.mark.slow
def test_job_scores_every_epoch_and_the_base_model_as_inspect_logs(
    trained_plan: RunPlan, tmp_path: Path
) -> None:
    spec = eval_spec_for(trained_plan)
    spec.write()
    done = subprocess.run(
        [sys.executable, "-m", "ck_dagster.evaluation.job", "eval/eval_spec.json"],
        cwd=spec.run_dir,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TIKTOKEN_CACHE_DIR": ""},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"eval tiny_eval/tuned {LAST} capitalization: 50/100 samples" in "\n".join(lines)
    assert any(
        line.startswith(f"eval tiny_eval/tuned {LAST} capitalization: success")
        and "match accuracy" in line
        for line in lines
    )

    results = read_results(Path(spec.run_dir))
    assert results is not None and results.ok and results.spec_version == spec.version
    assert (
        [(o.task, o.label) for o in results.evaluations]
        == spec.expected_logs()
        == [("capitalization", "epoch_0"), ("capitalization", LAST)]
    )
    for outcome in results.evaluations:
        assert outcome.log is not None
        log_path = Path(spec.run_dir) / outcome.log
        assert log_path.parent == spec.log_dir(outcome.task, outcome.label)
        log = read_eval_log(str(log_path))
        assert (log.status, log.eval.task, len(log.samples or [])) == (
            "success",
            "capitalization",
            100,
        )
        assert (
            log.results is not None
            and log.results.scores[0].metrics["accuracy"].value == outcome.accuracy
        )
    assert result_problems(results, spec) == []
    assert is_current(Path(spec.run_dir), spec)

    base = eval_spec_for(plan_run(trained_plan.experiment.file, "base"))
    base_results = run_evaluation(base, echo=lambda line: None)
    first, last = (o.accuracy for o in results.evaluations)
    (base_outcome,) = base_results.evaluations
    print(
        f"exact match on 100 held-out words: base {base_outcome.accuracy}, epoch_0 {first}, "
        f"{LAST} {last}"
    )
    assert base_outcome.accuracy == 0.0 and last is not None and last >= 0.1
    assert capitalized_share(spec, "capitalization", LAST) >= 0.9
    assert capitalized_share(base, "capitalization", "base") <= 0.3

    weights = Path(spec.targets[-1].path) / "model-00001-of-00001.safetensors"
    weights.touch()  # a rewritten checkpoint makes the results out of date
    assert not is_current(Path(spec.run_dir), spec)


def test_user_task_script_with_args_on_the_base_model(
    experiment: Callable[..., Path], tmp_path: Path
) -> None:
    script = tmp_path / "first_letters.py"
    script.write_text("""
import json
from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import match
from ck_dagster.evaluation.tasks import chat_messages

@task
def first_letters(data_path: str, prompt: str, system_prompt: str, count: int) -> Task:
    rows = json.load(open(data_path))["validation"][:count]
    return Task(dataset=[Sample(input=chat_messages(r["input"], prompt=prompt,
                                                    system_prompt=system_prompt),
                                target=r["input"]) for r in rows],
                scorer=match(location="begin"))
""")
    file = experiment(
        evaluation=f"""
evaluation:
  max_tokens: 12
  tasks:
    - {{name: letters, script: {script}, args: {{count: 7}}}}
"""
    )
    spec = eval_spec_for(plan_run(file, "base"))
    lines: list[str] = []
    results = run_evaluation(spec, echo=lines.append)

    (outcome,) = results.evaluations
    assert (outcome.task, outcome.label, outcome.status) == ("letters", "base", "success")
    assert (outcome.samples, outcome.completed, outcome.errors) == (7, 7, 0)
    assert set(outcome.metrics) == {"match"}
    assert result_problems(results, spec) == []
    log = read_eval_log(str(Path(spec.run_dir) / str(outcome.log)))
    assert log.eval.task_args["count"] == 7
    assert any(line.startswith("eval tiny_eval/base base letters: 7/7 samples,") for line in lines)

    again = run_evaluation(spec, echo=lambda line: None)  # the earlier log is set aside
    assert [p.name for p in spec.log_dir("letters", "base").glob("*.eval")] == [
        Path(str(again.evaluations[0].log)).name
    ]
    (kept,) = (Path(spec.run_dir) / "eval.previous").rglob("*.eval")
    assert kept.name == Path(str(outcome.log)).name


def test_failures_are_recorded_and_fail_the_job(
    experiment: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = eval_spec_for(plan_run(experiment(), "tuned"))  # never trained: no epoch folders
    spec.write()

    assert main([str(spec.spec_path)]) == 1
    err = capsys.readouterr().err
    assert "2 of 2 evaluations failed" in err and "has its training finished?" in err
    results = read_results(Path(spec.run_dir))
    assert results is not None and not results.ok
    assert results.checkpoints == {"epoch_0": "missing", LAST: "missing"}
    assert result_problems(results, spec)[0].startswith(
        "capitalization on epoch_0: evaluation error:"
    )
    assert not is_current(Path(spec.run_dir), spec)


def test_errored_samples_are_counted_and_fail_the_evaluation(
    experiment: Callable[..., Path], tmp_path: Path
) -> None:
    data = tmp_path / "data.json"
    rows = [{"input": word, "output": word.title()} for word in ["apple", "pear", "x" * 300]]
    data.write_text(json.dumps({"train": rows, "test": rows}))
    spec = eval_spec_for(plan_run(experiment(data=data), "base"))
    results = run_evaluation(spec, echo=lambda line: None)

    (outcome,) = results.evaluations
    assert (outcome.status, outcome.samples, outcome.completed, outcome.errors) == (
        "success",
        3,
        2,
        1,
    )
    assert outcome.error is not None and "leaves no room in the model's context" in outcome.error
    assert not outcome.ok and not is_current(Path(spec.run_dir), spec)
    errored, unscored = result_problems(results, spec)
    assert errored.startswith(
        'capitalization on base: 1 of 3 samples errored (first: CkError("a prompt of 256 tokens'
    )
    assert unscored == "capitalization on base: 2 samples scored, but the test split has 3 rows"


def test_an_unreadable_spec_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "eval_spec.json").write_text(json.dumps({"partition_key": "x"}))
    assert main([str(tmp_path / "eval_spec.json")]) == 2
    assert "not a readable eval spec" in capsys.readouterr().err
