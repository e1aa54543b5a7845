"""A run's evaluation as a SLURM job: ``<run_dir>/eval.slurm`` and the request JobRunner runs;
and one job evaluating several runs that load the same model, one after another on one load.

Runs share a job only where that is faster: when the job pool cannot queue a job for each of
them at once anyway, each job takes its share of the runs (``runs_per_job``), so as many jobs
run as before, each loading the base model once instead of once per run. Each run's eval folder
then names that job (``shared_job.json``), so a process that evaluates the run by itself (after
a restart, or another Dagster run) follows it instead of starting a second job.

Kept apart from ``job`` (what runs inside the job) so planning and submitting evaluations
imports neither inspect-ai nor the model code.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ck_dagster.errors import CkError
from ck_dagster.evaluation.results import is_current
from ck_dagster.evaluation.spec import EVAL_DIR, SPEC_FILE, EvalSpec, eval_gpus
from ck_dagster.fileio import atomic_write_text
from ck_dagster.finetune.plan import RunPlan
from ck_dagster.slurm.resources import Resources
from ck_dagster.slurm.runner import JobRequest
from ck_dagster.slurm.script import JobEnvironment, JobScript, job_name_for
from ck_dagster.slurm.states import format_duration, parse_duration

EVAL_SCRIPT = "eval.slurm"
#: the script of a job evaluating several runs, in the first run's folder.
SHARED_SCRIPT = "eval-shared.slurm"
#: in a run's eval folder: the job evaluating it with other runs (name, log folder).
SHARED_JOB = "shared_job.json"
#: what the job runs, from the run directory.
JOB_COMMAND = ("python", "-m", "ck_dagster.evaluation.job", f"{EVAL_DIR}/{SPEC_FILE}")


def eval_resources(plan: RunPlan) -> Resources:
    """What the run's eval job asks for: the run's resources with the GPUs its model needs
    (the tiny model: none)."""
    return replace(plan.resources, gpus=eval_gpus(plan))


def eval_job_script(spec: EvalSpec, plan: RunPlan, environment: JobEnvironment) -> JobScript:
    """The run's ``eval.slurm``, logging to ``<run_dir>/eval/slurm-<job id>.out``."""
    return JobScript(
        job_name=job_name_for(plan.experiment.name, plan.run.name, "eval"),
        workdir=plan.run_dir,
        log_path=spec.eval_dir / "slurm-%j.out",
        resources=eval_resources(plan),
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
    ``eval.slurm`` are (re)written. A live job evaluating it with other runs is followed."""
    run_dir = Path(spec.run_dir)
    return JobRequest(
        key=spec.partition_key,
        script=run_dir / EVAL_SCRIPT,
        job_name=script.job_name,
        is_done=lambda: is_current(run_dir, spec),
        before_submit=lambda: _prepare(spec, script),
        force=force,
        verb="evaluated",
        shared_jobs=lambda: _shared_job(spec),
    )


def _prepare(spec: EvalSpec, script: JobScript) -> None:
    """Check that the run's targets exist, then write its ``eval_spec.json`` and
    ``eval.slurm`` (also when a shared job evaluates it: to run it by hand)."""
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
    atomic_write_text(Path(spec.run_dir) / EVAL_SCRIPT, script.render())


def _shared_job(spec: EvalSpec) -> list[tuple[str, Path]]:
    """The shared job ``shared_job.json`` names, if any."""
    try:
        named = json.loads((spec.eval_dir / SHARED_JOB).read_text())
        return [(str(named["job_name"]), Path(named["log_folder"]))]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def shared_load(spec: EvalSpec, plan: RunPlan) -> str | None:
    """What an eval job of this run loads and asks for: runs with the same value can share a
    job and its one load. None when its targets load several folders (a full fine-tune's
    epochs: nothing to share)."""
    folders = {target.path for target in spec.targets}
    if len(folders) != 1:
        return None
    return json.dumps(
        [plan.experiment.name, spec.model.identity(), folders.pop(), repr(eval_resources(plan))]
    )


def runs_per_job(runs: int, slots: int | None) -> int:
    """How many of ``runs`` runs sharing a load each eval job evaluates: one while the pool
    (``slots`` jobs in the queue at once; None: no cap) can queue a job for each, else each
    job's share."""
    return 1 if slots is None or runs <= slots else math.ceil(runs / slots)


def shared_request(
    members: Sequence[tuple[EvalSpec, RunPlan]],
    environment: JobEnvironment,
    *,
    force: bool = False,
) -> tuple[JobRequest, Callable[[], None]]:
    """One job evaluating every member run in turn, on one load, and a function that clears
    the members' ``shared_job.json`` once that job is over. It logs into the first run's eval
    folder; its time limit is the members' together (up to the profile's ``max_time``)."""
    (lead_spec, lead), names = members[0], [plan.run.name for _, plan in members]
    digest = hashlib.sha256("\n".join(spec.partition_key for spec, _ in members).encode())
    job_name = job_name_for(lead.experiment.name, f"shared-{digest.hexdigest()[:10]}", "eval")
    script = JobScript(
        job_name=job_name,
        workdir=lead.run_dir,
        log_path=lead_spec.eval_dir / "slurm-%j.out",
        resources=replace(eval_resources(lead), time=_together([p for _, p in members])),
        command=("python", "-m", "ck_dagster.evaluation.job")
        + tuple(str(spec.spec_path) for spec, _ in members),
        environment=environment,
        description=(
            f"Evaluation job for runs {', '.join(names)} of {lead.experiment.name} on one "
            f"model load, written by ck_dagster.\nSubmit by hand with: sbatch {SHARED_SCRIPT}"
        ),
    )
    marker = json.dumps({"job_name": job_name, "log_folder": str(lead_spec.eval_dir)})

    def before_submit() -> None:
        for spec, plan in members:
            _prepare(spec, eval_job_script(spec, plan, environment))
            atomic_write_text(spec.eval_dir / SHARED_JOB, marker + "\n")
        atomic_write_text(lead.run_dir / SHARED_SCRIPT, script.render())

    def clear() -> None:
        for spec, _ in members:
            (spec.eval_dir / SHARED_JOB).unlink(missing_ok=True)

    request = JobRequest(
        key=f"{lead.experiment.name}/[{', '.join(names)}]",
        script=lead.run_dir / SHARED_SCRIPT,
        job_name=job_name,
        is_done=lambda: all(is_current(Path(spec.run_dir), spec) for spec, _ in members),
        before_submit=before_submit,
        force=force,
        verb="evaluated",
        log_folder=lead_spec.eval_dir,
    )
    return request, clear


def _together(plans: Sequence[RunPlan]) -> str:
    """The members' eval time limits added up, capped at the profile's ``max_time`` (a
    member without a limit: none)."""
    limits = [parse_duration(plan.resources.time) for plan in plans]
    if any(limit is None for limit in limits):
        return plans[0].resources.time
    seconds = sum(limit for limit in limits if limit is not None)
    cap = parse_duration(plans[0].max_time) if plans[0].max_time else None
    return format_duration(min(seconds, cap) if cap else seconds)
