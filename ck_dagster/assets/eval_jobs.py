"""Evaluation jobs of runs: the requests ``eval_log`` runs, and the early start the training
step gives them.

A run's evaluation should not wait for the slowest run of a sweep. Under automation it does not:
``checkpoint`` records each run as soon as its job ends, and ``eval_log``'s condition sees it.
In one ``dagster asset materialize --select checkpoint,eval_log`` run, though, Dagster starts
the ``eval_log`` step only after the whole ``checkpoint`` step; so that step, as each run's
training ends, submits the run's evaluation job itself (:class:`EarlyEvaluations`) with the
claim and pool slot the ``eval_log`` step of the same Dagster run then takes over: it re-attaches
to that job, or adopts its results, and records them.

Runs that load the same model share a job where the pool could not queue one for each anyway
(:class:`SharedEvaluations`, ``evaluation.submit``); each is still recorded as its own results
land.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, AssetKey, Failure

from ck_dagster.assets.launcher import LauncherResource
from ck_dagster.assets.registry import EVAL_SPEC, registered_versions
from ck_dagster.errors import CkError
from ck_dagster.evaluation.results import is_current
from ck_dagster.evaluation.spec import EvalSpec, eval_spec_for
from ck_dagster.evaluation.submit import (
    eval_job_script,
    eval_request,
    runs_per_job,
    shared_load,
    shared_request,
)
from ck_dagster.experiment.problems import ExperimentFileError
from ck_dagster.finetune.plan import RunPlan
from ck_dagster.slurm.runner import JobOutcome, JobRequest, JobRunner
from ck_dagster.slurm.script import JobEnvironment

EVAL_LOG = AssetKey("eval_log")
#: the label of evaluation jobs in the job pool (``eval_log[<partition>]``).
LABEL = "eval_log"


def registered_eval_specs(
    context: AssetExecutionContext, plans: dict[str, RunPlan]
) -> dict[str, EvalSpec]:
    """Each run's evaluation, refused (Failure) when it differs from the registered one."""
    try:
        specs = {key: eval_spec_for(plan) for key, plan in plans.items()}
    except ExperimentFileError as exc:
        raise _failure(str(exc)) from None
    registered = registered_versions(context.instance, EVAL_SPEC, specs)
    changed = [key for key, spec in specs.items() if registered.get(key) != spec.version]
    if changed:
        raise _failure(
            f"the evaluation of {', '.join(changed)} changed since it was registered (settings, "
            "tasks, task code or prompts): register the experiment file again (ck-dagster "
            "register FILE, or let the experiments sensor do it) so Dagster records it"
        )
    return specs


def _failure(description: str) -> Failure:
    return Failure(description=description, allow_retries=False)


def eval_requests(
    specs: dict[str, EvalSpec],
    plans: dict[str, RunPlan],
    environment: JobEnvironment,
    force: bool = False,
) -> dict[str, JobRequest]:
    """The job request of each run's evaluation (its ``eval.slurm`` written)."""
    return {
        key: eval_request(spec, eval_job_script(spec, plans[key], environment), force=force)
        for key, spec in specs.items()
    }


def eval_progress(line: str) -> str | None:
    """The eval job's own progress and error lines (it prints nothing else worth showing)."""
    text = line.strip()
    return text if text.startswith(("eval ", "error")) else None


class EarlyEvaluations:
    """Starts a run's evaluation job as soon as its checkpoint is recorded, from the training
    step of a Dagster run that also materializes ``eval_log`` (see the module docstring)."""

    def __init__(
        self,
        context: AssetExecutionContext,
        launcher: LauncherResource,
        environment: JobEnvironment,
    ) -> None:
        self.context = context
        self.environment = environment
        self.runner = launcher.runner(context, LABEL, eval_progress)
        self.started: list[str] = []

    @staticmethod
    def wanted(context: AssetExecutionContext) -> bool:
        """Whether to start evaluations early: ``eval_log`` is selected in this Dagster run,
        without ``force`` (a forced evaluation waits for its own step)."""
        selection = context.run.asset_selection
        if selection is None or EVAL_LOG not in selection:
            return False
        ops: dict[str, Any] = (context.run.run_config or {}).get("ops", {})
        return not ops.get(EVAL_LOG.to_user_string(), {}).get("config", {}).get("force", False)

    def start(self, key: str, plan: RunPlan) -> None:
        """Submit ``key``'s evaluation job now; a problem is logged and left to the eval_log
        step, which reports it."""
        try:
            specs = registered_eval_specs(self.context, {key: plan})
            [request] = eval_requests(specs, {key: plan}, self.environment).values()
            job_id = self.runner.launch(request)
        except (Failure, CkError) as exc:
            message = exc.description if isinstance(exc, Failure) else str(exc)
            self.context.log.warning(f"{key}: evaluation not started early: {message}")
            return
        if job_id:
            self.started.append(job_id)
            self.context.log.info(
                f"{key}: evaluation job {job_id} started as the checkpoint landed; "
                "the eval_log step follows it"
            )

    def cancel(self) -> None:
        """Cancel the evaluation jobs started here (the step was interrupted, so the eval_log
        step that would follow them never runs)."""
        for job_id in self.started:
            try:
                self.runner.launcher.cancel(job_id)
            except CkError as exc:
                self.context.log.warning(f"could not cancel evaluation job {job_id}: {exc}")
        if self.started:
            self.context.log.info(
                f"interrupted: cancelled evaluation job(s) {', '.join(self.started)}"
            )


class SharedEvaluations:
    """The eval_log step's jobs: one per run, except that runs loading the same model share
    jobs when the pool cannot queue a job for each of them (``evaluation.submit``), and only
    runs this process holds with no live job of their own; their claims are held from here
    until :meth:`release`."""

    def __init__(
        self,
        runner: JobRunner,
        requests: dict[str, JobRequest],
        specs: dict[str, EvalSpec],
        plans: dict[str, RunPlan],
        environment: JobEnvironment,
        force: bool,
    ) -> None:
        self.runner = runner
        self.specs = specs
        #: run keys by the key of the shared job that evaluates them
        self.members: dict[str, list[str]] = {}
        self._clear: dict[str, Callable[[], None]] = {}
        self._held: list[JobRequest] = []
        loads: dict[str, list[str]] = defaultdict(list)
        for key in requests:
            load = shared_load(specs[key], plans[key])
            if load is not None:
                loads[load].append(key)
        capacity = runner.slots.capacity()
        wanted = [keys for keys in loads.values() if runs_per_job(len(keys), capacity) > 1]
        shared: list[JobRequest] = []
        if wanted:
            self._held = runner.free_to_share([requests[k] for keys in wanted for k in keys])
            free = {request.key for request in self._held}
            for keys in wanted:
                keys = [key for key in keys if key in free]
                size = runs_per_job(len(keys), capacity)
                for start in range(0, len(keys), size):
                    chunk = keys[start : start + size]
                    if len(chunk) < 2:
                        continue
                    request, clear = shared_request(
                        [(specs[k], plans[k]) for k in chunk], environment, force=force
                    )
                    self.members[request.key], self._clear[request.key] = chunk, clear
                    shared.append(request)
        in_shared = {key for keys in self.members.values() for key in keys}
        self.requests = [r for k, r in requests.items() if k not in in_shared] + shared

    def per_run(self, outcome: JobOutcome) -> list[JobOutcome]:
        """A job's outcome as its runs': a shared job's run succeeded when its results are
        current, whatever became of the others."""
        members = self.members.get(outcome.key)
        if members is None:
            return [outcome]
        runs = []
        for key in members:
            spec = self.specs[key]
            if is_current(Path(spec.run_dir), spec):
                runs.append(replace(outcome, key=key, status="completed", message=""))
                continue
            why = outcome.message.split("\n", 1)[-1] if outcome.message else ""
            runs.append(
                replace(
                    outcome,
                    key=key,
                    status="failed",
                    message=f"{key}: not evaluated by job {outcome.job_id or '-'}, which it "
                    f"shared with {len(members) - 1} other run(s) ({outcome.status})"
                    + (f"\n{why}" if why else ""),
                )
            )
        return runs

    def ended(self, outcome: JobOutcome) -> None:
        """A shared job is over: its runs no longer name it."""
        if outcome.key in self._clear:
            self._clear[outcome.key]()

    def landed(self, job_key: str, line: str) -> str | None:
        """The run of shared job ``job_key`` whose results this log line announces, if any
        (the job prints ``eval <run>: all N evaluations succeeded -> ...``)."""
        text = line.strip()
        for key in self.members.get(job_key, []):
            if text.startswith(f"eval {key}: all ") and " succeeded " in text:
                return key
        return None

    def release(self) -> None:
        """Give back the claims of the runs that went into shared jobs."""
        for request in self._held:
            self.runner.release_claim(request)
