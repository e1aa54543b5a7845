"""eval.slurm and the JobRunner request: resources by model, files written right before submit."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ck_dagster.errors import CkError
from ck_dagster.evaluation.spec import eval_spec_for
from ck_dagster.evaluation.submit import (
    eval_job_script,
    eval_request,
    runs_per_job,
    shared_load,
    shared_request,
)
from ck_dagster.experiment.load import load_experiment
from ck_dagster.finetune.plan import plan_experiment
from ck_dagster.slurm.script import JobEnvironment
from ck_dagster_tests.evaluation.tiny_experiment import LORA_RECIPE, plan_run
from ck_dagster_tests.fixtures.dagster import EXAMPLES


@pytest.mark.parametrize(
    "example,run,gpus,header",
    [
        ("cap_rank_sweep.yaml", "rank4", 1, ["--gres=gpu:1", "--partition=nomig", "--mem=40G"]),
        ("cap_rank_sweep.yaml", "base", 1, ["--gres=gpu:1", "--partition=nomig"]),
        # trained on 2 GPUs (distributed), evaluated on the one its model needs
        ("model_comparison.yaml", "qwen_lr5e-4_2gpu", 1, ["--gres=gpu:1"]),
    ],
)
def test_gpu_models_get_their_gpus_and_cuda(
    example: str, run: str, gpus: int, header: list[str]
) -> None:
    plan = plan_experiment(load_experiment(EXAMPLES / example), JobEnvironment()).runs[run]
    spec = eval_spec_for(plan)
    script = eval_job_script(spec, plan, JobEnvironment())

    assert script.resources.gpus == gpus
    assert (spec.model.device, spec.model.dtype) == ("cuda", "bf16")
    lines = script.render().splitlines()
    assert all(f"#SBATCH {option}" in lines for option in header)
    assert f"#SBATCH --job-name=ck:{plan.experiment.name}/{run}:eval" in lines


def test_tiny_model_runs_on_cpu_from_the_run_directory(
    experiment: Callable[..., Path], tmp_path: Path
) -> None:
    plan = plan_run(experiment(), "tuned")
    spec = eval_spec_for(plan)
    script = eval_job_script(spec, plan, JobEnvironment(venv="/opt/venv"))
    text = script.render()

    assert script.resources.gpus == 0 and "--gres" not in text
    assert f"#SBATCH --output={plan.run_dir}/eval/slurm-%j.out" in text.splitlines()
    assert f"#SBATCH --chdir={plan.run_dir}" in text.splitlines()
    assert "source /opt/venv/bin/activate" in text and "export HF_HUB_OFFLINE=1" in text
    assert text.splitlines()[-1] == 'python -m ck_dagster.evaluation.job eval/eval_spec.json "$@"'
    (tmp_path / "eval.slurm").write_text(text)
    subprocess.run(["bash", "-n", str(tmp_path / "eval.slurm")], check=True)


def test_request_writes_spec_and_script_only_when_there_is_something_to_evaluate(
    experiment: Callable[..., Path],
) -> None:
    plan = plan_run(experiment(), "tuned")
    spec = eval_spec_for(plan)
    script = eval_job_script(spec, plan, JobEnvironment())
    request = eval_request(spec, script)

    assert (request.key, request.job_name, request.script) == (
        "tiny_eval/tuned",
        "ck:tiny_eval/tuned:eval",
        plan.run_dir / "eval.slurm",
    )
    assert not request.is_done()
    with pytest.raises(CkError, match="materialize its checkpoint first"):
        request.before_submit()
    assert not spec.spec_path.exists()

    for target in spec.targets:
        Path(target.path).mkdir(parents=True)
    request.before_submit()
    assert spec.spec_path.is_file()
    assert (plan.run_dir / "eval.slurm").read_text() == script.render()


@pytest.mark.parametrize(
    "runs,slots,each", [(3, 1, 3), (3, 25, 1), (25, 25, 1), (50, 25, 2), (5, 2, 3), (9, None, 1)]
)
def test_runs_share_a_job_only_when_the_pool_cannot_queue_one_each(
    runs: int, slots: int | None, each: int
) -> None:
    assert runs_per_job(runs, slots) == each


def test_lora_and_control_runs_share_a_load_full_fine_tunes_do_not(
    experiment: Callable[..., Path],
) -> None:
    load = {}
    for recipe, base_recipe in (("lora", LORA_RECIPE), ("full", "llama3_2/1B_full_single_device")):
        file = experiment(base_recipe=base_recipe)  # one file at a time: the same path
        for name in ("tuned", "base"):
            plan = plan_run(file, name)
            load[(name, recipe)] = shared_load(eval_spec_for(plan), plan)
    assert load[("tuned", "lora")] == load[("base", "lora")] == load[("base", "full")]
    assert load[("tuned", "lora")] is not None
    assert load[("tuned", "full")] is None  # its epochs are each a model of their own


def test_a_shared_job_evaluates_each_run_in_turn_within_their_time_together(
    experiment: Callable[..., Path],
) -> None:
    file = experiment(base_recipe=LORA_RECIPE)
    members = [
        (eval_spec_for(plan), plan) for plan in (plan_run(file, r) for r in ("tuned", "base"))
    ]
    request, clear = shared_request(members, JobEnvironment())
    for spec, _ in members:
        for target in spec.targets:
            Path(target.path).mkdir(parents=True, exist_ok=True)
            Path(target.checkpoint).mkdir(parents=True, exist_ok=True)
    request.before_submit()

    text = request.script.read_text()
    assert request.job_name.startswith("ck:tiny_eval/shared-") and request.job_name.endswith(
        ":eval"
    )
    assert request.key == "tiny_eval/[tuned, base]"
    assert text.splitlines()[-1] == (
        "python -m ck_dagster.evaluation.job "
        + " ".join(str(spec.spec_path) for spec, _ in members)
        + ' "$@"'
    )
    assert "#SBATCH --time=1:00:00" in text.splitlines()  # two tiny runs of 0:30:00
    for spec, plan in members:  # each run: its spec, its own eval.slurm, the shared job named
        assert spec.spec_path.is_file() and (plan.run_dir / "eval.slurm").is_file()
        alone = eval_request(spec, eval_job_script(spec, plan, JobEnvironment()))
        assert alone.shared_jobs() == [(request.job_name, members[0][0].eval_dir)]
    clear()
    assert all(
        eval_request(s, eval_job_script(s, p, JobEnvironment())).shared_jobs() == []
        for s, p in members
    )
