"""A run's evaluation as a SLURM job: ``<run_dir>/eval.slurm`` and the request JobRunner runs.

Kept apart from ``job`` (what runs inside the job) so planning and submitting evaluations
imports neither inspect-ai nor the model code.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ck_dagster.errors import CkError
from ck_dagster.evaluation.results import is_current
from ck_dagster.evaluation.spec import EVAL_DIR, SPEC_FILE, EvalSpec, eval_gpus
from ck_dagster.fileio import atomic_write_text
from ck_dagster.finetune.plan import RunPlan
from ck_dagster.slurm.runner import JobRequest
from ck_dagster.slurm.script import JobEnvironment, JobScript, job_name_for

EVAL_SCRIPT = "eval.slurm"
#: what the job runs, from the run directory.
JOB_COMMAND = ("python", "-m", "ck_dagster.evaluation.job", f"{EVAL_DIR}/{SPEC_FILE}")


def eval_job_script(spec: EvalSpec, plan: RunPlan, environment: JobEnvironment) -> JobScript:
    """The run's ``eval.slurm``: the run's resources with the GPUs its model needs (the tiny
    model: none), logging to ``<run_dir>/eval/slurm-<job id>.out``."""
    return JobScript(
        job_name=job_name_for(plan.experiment.name, plan.run.name, "eval"),
        workdir=plan.run_dir,
        log_path=spec.eval_dir / "slurm-%j.out",
        resources=replace(plan.resources, gpus=eval_gpus(plan)),
        command=JOB_COMMAND,
        environment=environment,
        description=(
            f"Evaluation job for run {plan.partition_key}, written by ck_dagster.\n"
            f"Submit by hand from this folder with: sbatch {EVAL_SCRIPT}"
        ),
    )


def eval_request(spec: EvalSpec, script: JobScript, *, force: bool = False) -> JobRequest:
    """The job that evaluates ``spec``'s run, for ``JobRunner``: adopted while its results are
    current; right before each submission its targets must exist, and ``eval_spec.json`` and
    ``eval.slurm`` are (re)written."""
    run_dir = Path(spec.run_dir)

    def before_submit() -> None:
        missing = [
            folder
            for target in spec.targets
            for folder in (target.path, target.checkpoint)
            if not Path(folder).is_dir()
        ]
        if missing:
            raise CkError(
                f"{spec.partition_key}: nothing to evaluate at {', '.join(missing)}: "
                "materialize its checkpoint first"
            )
        spec.write()
        atomic_write_text(run_dir / EVAL_SCRIPT, script.render())

    return JobRequest(
        key=spec.partition_key,
        script=run_dir / EVAL_SCRIPT,
        job_name=script.job_name,
        is_done=lambda: is_current(run_dir, spec),
        before_submit=before_submit,
        force=force,
        verb="evaluated",
    )
