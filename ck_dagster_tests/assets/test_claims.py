"""One job per run, whatever starts the materialization: claims in the Dagster instance, and
two real `dagster asset materialize` processes started at the same moment on real SLURM."""

from __future__ import annotations

import multiprocessing
import os
import re
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from ck_dagster.assets.launcher import InstanceClaims
from ck_dagster.slurm.runner import JobRequest
from ck_dagster.slurm.states import JobState
from ck_dagster_tests.assets.test_checkpoint import (  # noqa: F401  (the fixture)
    EVALUATION,
    TRAINING,
    Step,
    experiment,
    jobs_named,
    latest,
    materialize,
    start_materialize,
    wait_running,
)
from ck_dagster_tests.assets.test_resume import wait_for
from ck_dagster_tests.fixtures.dagster import run_command

#: a run that trains for minutes, unless edited: the edit trains a few seconds
EDITED_RUN = """
  - {name: long, type: fine-tuned, model: tiny-llama,
     parameters: {epochs: 8, max_steps_per_epoch: 60}}
"""
#: one short run (a few seconds of training)
SHORT_RUN = """
  - {name: one, type: fine-tuned, model: tiny-llama, parameters: {epochs: 1}}
"""


ROUNDS = 4


def _claim_in_another_process(home: str, run_id: str, barrier, results) -> None:
    os.environ["DAGSTER_HOME"] = home
    with DagsterInstance.get() as instance:
        claims = InstanceClaims(instance, run_id, settle_s=1.0)
        for round_ in range(ROUNDS):
            request = JobRequest(
                key=f"exp/run{round_}",
                script=Path("x"),
                job_name=f"ck:exp/run{round_}:train",
                is_done=lambda: False,
            )
            barrier.wait()
            results[(round_, run_id)] = claims.claim([request]).get(request.key, "mine")


@pytest.mark.unit
def test_a_released_take_over_still_tells_the_process_it_was_taken_from(tmp_path) -> None:
    """Run B takes a job's claim from run A (an edit) and finishes before A sees its stale job
    end: A still learns why, and the released claim is free for a later run C."""
    request = JobRequest(
        key="exp/run", script=Path("x"), job_name="ck:exp/run:train", is_done=lambda: False
    )
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        first, second, third = (InstanceClaims(instance, r, settle_s=0) for r in "ABC")
        assert first.claim([request]) == {}
        second.take_over(request, "edited (changed: lr)")
        assert first.lost(request) == "Dagster run B: edited (changed: lr)"
        second.release(request)
        assert first.lost(request) == "Dagster run B: edited (changed: lr)"
        assert third.claim([request]) == {} and third.lost(request) is None


def test_claims_made_at_the_same_moment_have_one_winner(dagster_home) -> None:
    """Two processes claim one job at the same instant, several times; one holds it, and the
    other is told which Dagster run does."""
    context = multiprocessing.get_context("spawn")
    with DagsterInstance.get() as instance:  # started runs, so that their claims count
        run_ids = [
            instance.add_run(DagsterRun(job_name="claims", status=DagsterRunStatus.STARTED)).run_id
            for _ in range(2)
        ]
    with context.Manager() as manager:
        barrier, results = manager.Barrier(2, timeout=60), manager.dict()
        workers = [
            context.Process(
                target=_claim_in_another_process, args=(str(dagster_home), run_id, barrier, results)
            )
            for run_id in run_ids
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        outcome = dict(results)
    assert len(outcome) == 2 * ROUNDS, outcome
    for round_ in range(ROUNDS):
        [first, second] = [outcome[(round_, run_id)] for run_id in run_ids]
        assert sorted([first, second]).count("mine") == 1, outcome
        winner = run_ids[0] if first == "mine" else run_ids[1]
        assert {first, second} == {"mine", f"Dagster run {winner}"}


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("step", [TRAINING, EVALUATION], ids=["training", "evaluation"])
def test_two_materializations_at_once_make_one_job(experiment, step) -> None:  # noqa: F811  (the imported fixture)
    two_materializations_at_once_make_one_job(experiment, step)


def two_materializations_at_once_make_one_job(make_experiment, step: Step) -> None:
    """Two `dagster asset materialize` of one run's ``step`` at once: one submits the job, the
    other follows it, naming the holder; both succeed."""
    exp = make_experiment(SHORT_RUN)
    step.prepare(exp, "one")
    partition = exp.partition_key("one")
    processes = [start_materialize(partition, step), start_materialize(partition, step)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    [job] = jobs_named(exp, "one", step)
    submitted = [o for o in outputs if f"submitted job {job.job_id}" in o]
    assert len(submitted) == 1, outputs
    other = outputs[1 - outputs.index(submitted[0])]
    holder = re.search(rf"is being {step.verb} by Dagster run (\S+), job (\d+)", other)
    assert holder and holder.group(2) == job.job_id, other
    assert all(p.returncode == 0 for p in processes), outputs
    assert latest(partition, step.asset)["job_id"] == job.job_id


@pytest.mark.slurm
@pytest.mark.slow
def test_a_run_edited_while_its_job_runs_is_cancelled_and_trained_again(experiment) -> None:  # noqa: F811  (the imported fixture)
    """The next materialization cancels the stale job at once and trains the edit; the
    process that followed the stale job fails naming the edit."""
    exp = experiment(EDITED_RUN)
    partition = exp.partition_key("long")
    first = start_materialize(partition)
    stale = wait_running(exp, "long")
    # RUNNING in SLURM is not yet training: tune reads finetune.yaml at its start, and an edit
    # rewritten before then would be what the job trains. Edit once it trains the old config.
    job_log = exp.run_dir("long") / "artifacts" / f"slurm-{stale}.out"
    wait_for("the job to train", lambda: job_log.is_file() and "|Loss:" in job_log.read_text())
    exp.file.write_text(
        exp.file.read_text().replace(
            "{epochs: 8, max_steps_per_epoch: 60}", "{epochs: 1, max_steps_per_epoch: 4}"
        )
    )
    run_command(["ck-dagster", "register", exp.file])
    materialize("run_config", [partition])
    second = start_materialize(partition)
    first_output, _ = first.communicate(timeout=300)
    assert first.returncode != 0
    # CANCELLED, or FAILED when the job's exit marker (tune killed) is seen before SLURM's state
    assert re.search(
        rf"job {stale} ended [A-Z_]+: {re.escape(partition)} was edited meanwhile", first_output
    ), first_output[-3000:]
    changed = re.search(r"\(changed: ([^)]*)\): cancelled it", first_output)
    assert changed and set(changed.group(1).split(", ")) == {"epochs", "max_steps_per_epoch"}
    second_output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, second_output
    jobs = jobs_named(exp, "long")
    assert len(jobs) == 2 and {j.state for j in jobs} == {JobState.CANCELLED, JobState.COMPLETED}
    fresh = next(j for j in jobs if j.state is JobState.COMPLETED)
    metadata = latest(partition)
    assert metadata["job_id"] == fresh.job_id and metadata["epochs_saved"] == 1
    assert (
        f"job {stale} (RUNNING) was submitted before the run was edited (changed: "
        f"{changed.group(1)}): cancelled it" in metadata["notes"]
    )
