"""Evaluation jobs of runs: the requests ``eval_log`` runs, and the early start the training
step gives them.

A run's evaluation should not wait for the slowest run of a sweep. Under automation it does not:
``checkpoint`` records each run as soon as its job ends, and ``eval_log``'s condition sees it.
In one ``dagster asset materialize --select checkpoint,eval_log`` run, though, Dagster starts
the ``eval_log`` step only after the whole ``checkpoint`` step; so that step, as each run's
training ends, submits the run's evaluation job itself (:class:`EarlyEvaluations`) with the
claim and pool slot the ``eval_log`` step of the same Dagster run then takes over: it re-attaches
to that job, or adopts its results, and records them.
"""

from __future__ import annotations

from typing import Any

from dagster import AssetExecutionContext, AssetKey, Failure

from ck_dagster.assets.launcher import LauncherResource
from ck_dagster.assets.registry import EVAL_SPEC, registered_versions
from ck_dagster.errors import CkError
from ck_dagster.evaluation.spec import EvalSpec, eval_spec_for
from ck_dagster.evaluation.submit import eval_job_script, eval_request
from ck_dagster.experiment.problems import ExperimentFileError
from ck_dagster.finetune.plan import RunPlan
from ck_dagster.slurm.runner import JobRequest
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
