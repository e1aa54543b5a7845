"""Benchmark: evaluating one checkpoint through ck_dagster's job vs a bare ``inspect eval``.

Both score the same fine-tuned tiny-llama epoch folder on the same 100 held-out capitalization
words, greedy, at most 12 new tokens, side by side in one run:

- ck_dagster: ``python -m ck_dagster.evaluation.job eval/eval_spec.json`` (what eval.slurm
  runs), with the ``torchtune/`` provider: torchtune builds the model and tokenizes prompts
  exactly as training did.
- baseline: ``inspect eval task.py --model hf/... -M model_path=<epoch folder>``, inspect's own
  transformers provider, prompting through the folder's chat template.

Throughput is samples per second of the evaluation itself (first sample's start to the last
one's end); wall time is the whole command (imports and model load included). Both sides' answers
are compared one by one. The tiny model, its data and the fine-tuned checkpoint are built once
and cached with the test suite's (``$CK_DAGSTER_CACHE``).

Run: .venv/bin/python bench/bench_eval.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import median

from inspect_ai.log import EvalLog, read_eval_log

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test suite's tiny experiment and cache

from ck_dagster.evaluation.results import read_results  # noqa: E402
from ck_dagster.evaluation.spec import eval_spec_for  # noqa: E402
from ck_dagster.fileio import cache_dir, cached  # noqa: E402
from ck_dagster.slurm.script import OFFLINE_ENVIRONMENT  # noqa: E402
from ck_dagster.tiny import VERSION, built_data, built_model  # noqa: E402
from ck_dagster_tests.evaluation.tiny_experiment import (  # noqa: E402
    EPOCHS,
    PROMPT,
    SYSTEM_PROMPT,
    plan_run,
    train,
    write_experiment,
)

BIN = Path(sys.executable).parent
LAST = f"epoch_{EPOCHS - 1}"
MAX_TOKENS = 12
OFFLINE = {**os.environ, **OFFLINE_ENVIRONMENT}
BASELINE_TASK = f"""
from inspect_ai import task
from ck_dagster.evaluation.tasks import input_output

@task
def capitalization(data_path: str):
    return input_output(data_path=data_path, prompt={PROMPT!r}, system_prompt={SYSTEM_PROMPT!r},
                        name="capitalization")
"""


def fine_tuned_checkpoint(model_dir: Path, data: Path) -> Path:
    """The last epoch of the test suite's fine-tuned run, trained once and cached."""

    def make(path: Path) -> Path:
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            plan = plan_run(write_experiment(Path(scratch), model_dir, data), "tuned")
            print(f"training the checkpoint to evaluate ({EPOCHS} epochs) ...", flush=True)
            print(f"  tune run: {train(plan):.1f} s", flush=True)
            shutil.copytree(plan.artifacts_dir / LAST, Path(scratch) / "done")
            os.replace(Path(scratch) / "done", path)
        return path

    return cached(cache_dir() / f"bench-eval-checkpoint-{VERSION}", make)


def run(command: list[str], cwd: Path) -> float:
    """Run a command to its end (failing loudly); returns its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=OFFLINE, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started


@dataclass(frozen=True)
class Figures:
    """One run of one side: its log and the wall time of its command."""

    log: EvalLog
    wall_s: float

    @property
    def answers(self) -> list[str]:
        return [sample.output.completion for sample in self.log.samples or []]

    @property
    def eval_s(self) -> float:
        """From the first sample's start to the last one's end: the evaluation itself, without
        imports and model loading."""
        samples = self.log.samples or []
        return (
            max(datetime.fromisoformat(str(s.completed_at)) for s in samples)
            - min(datetime.fromisoformat(str(s.started_at)) for s in samples)
        ).total_seconds()

    @property
    def samples_per_s(self) -> float:
        return len(self.answers) / self.eval_s

    @property
    def accuracy(self) -> float:
        assert self.log.results is not None
        return self.log.results.scores[0].metrics["accuracy"].value


def bench_ck_dagster(work: Path, model_dir: Path, data: Path, checkpoint: Path) -> Figures:
    file = write_experiment(
        work,
        model_dir,
        data,
        evaluation=f"""
evaluation:
  max_tokens: {MAX_TOKENS}
  tasks: [{{name: capitalization}}]
  matrix: [{{run: tuned, epochs: [{EPOCHS - 1}]}}]
""",
    )
    spec = eval_spec_for(plan_run(file, "tuned"))
    shutil.copytree(checkpoint, spec.targets[0].path)
    spec.write()
    wall = run(
        [str(BIN / "python"), "-m", "ck_dagster.evaluation.job", "eval/eval_spec.json"],
        Path(spec.run_dir),
    )
    results = read_results(Path(spec.run_dir))
    assert results is not None and results.evaluations[0].log is not None
    return Figures(read_eval_log(str(Path(spec.run_dir) / results.evaluations[0].log)), wall)


def bench_inspect_hf(work: Path, data: Path, checkpoint: Path) -> Figures:
    (work / "task.py").write_text(BASELINE_TASK)
    wall = run(
        [
            str(BIN / "inspect"),
            "eval",
            "task.py",
            "--model",
            "hf/tiny",
            "-M",
            f"model_path={checkpoint}",
            "-M",
            "do_sample=false",
            "--max-tokens",
            str(MAX_TOKENS),
            "-T",
            f"data_path={data}",
            "--log-dir",
            "logs",
            "--display",
            "none",
        ],
        work,
    )
    (log_file,) = (work / "logs").glob("*.eval")
    return Figures(read_eval_log(str(log_file)), wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each side, alternating; the figures are medians",
    )
    rounds = parser.parse_args().rounds
    model_dir = built_model()
    data = built_data()
    checkpoint = fine_tuned_checkpoint(model_dir, data)
    ours: list[Figures] = []
    theirs: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        for number in range(1, rounds + 1):
            work = Path(tmp) / f"round{number}"
            (work / "ck").mkdir(parents=True)
            (work / "hf").mkdir()
            ours.append(bench_ck_dagster(work / "ck", model_dir, data, checkpoint))
            theirs.append(bench_inspect_hf(work / "hf", data, checkpoint))
            print(
                f"round {number}: ck_dagster {ours[-1].samples_per_s:.1f} samples/s, "
                f"hf {theirs[-1].samples_per_s:.1f} samples/s",
                flush=True,
            )
    print(
        f"\nEvaluating {checkpoint} ({LAST} of a full fine-tune of tiny-llama) on "
        f"{len(ours[0].answers)} test words, greedy, at most {MAX_TOKENS} new tokens; "
        f"medians of {rounds} rounds:\n"
    )
    print(f"{'':28} {'samples/s':>10} {'eval s':>8} {'wall s':>8} {'exact match':>12}")
    for name, side in (("ck_dagster job (torchtune/)", ours), ("inspect eval (hf/)", theirs)):
        print(
            f"{name:28} {median(f.samples_per_s for f in side):10.1f} "
            f"{median(f.eval_s for f in side):8.1f} {median(f.wall_s for f in side):8.1f} "
            f"{side[0].accuracy:12.2f}"
        )
    throughput = median(f.samples_per_s for f in ours) / median(f.samples_per_s for f in theirs)
    wall = median(f.wall_s for f in ours) / median(f.wall_s for f in theirs)
    same = sum(a == b for a, b in zip(ours[0].answers, theirs[0].answers))
    print(
        f"\nck_dagster / hf: throughput {throughput:.2f}x, wall time {wall:.2f}x; "
        f"identical answers: {same}/{len(ours[0].answers)}"
    )
    print(
        json.dumps(
            {
                "bench": "eval",
                "samples_per_s": round(median(f.samples_per_s for f in ours), 1),
                "baseline_samples_per_s": round(median(f.samples_per_s for f in theirs), 1),
                "ratio": round(throughput, 2),
                "wall_ratio": round(wall, 2),
                "identical_answers": same,
            }
        )
    )


if __name__ == "__main__":
    main()
