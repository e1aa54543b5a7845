"""Faults produced for real on the test cluster, through `dagster asset materialize`: a cgroup
out-of-memory kill, preemption, controller outages, Ctrl-C."""

from __future__ import annotations

import json
import random
import signal
import string
import time
import uuid
from pathlib import Path

import pytest

from ck_dagster.experiment.load import load_experiment
from ck_dagster.slurm.client import SlurmLauncher
from ck_dagster.slurm.states import JobState
from ck_dagster_tests.assets.test_checkpoint import (  # noqa: F401  (the fixture)
    LONG_RUN,
    experiment,
    jobs_named,
    latest,
    materialize,
    start_materialize,
    wait_running,
)
from ck_dagster_tests.assets.test_claims import SHORT_RUN
from ck_dagster_tests.fixtures.dagster import run_command
from ck_dagster_tests.fixtures.experiments import write_tiny_experiment

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: an odd batch: 2025 sequences of 256 tokens need far more than 3.5 GB on the tiny model,
#: the retry's 2025 / 3 = 675 about 3 GB
OOM_RUN = """
  - {name: big, type: fine-tuned, model: tiny-llama, compute: {mem: 3500M},
     parameters: {batch_size: 2025, epochs: 1, max_steps_per_epoch: 1}}
"""


def long_words(path: Path, rows: int = 2025) -> Path:
    """A data file of long words: every sequence fills the tiny model's 256 tokens."""
    rng = random.Random(0)

    def row() -> dict[str, str]:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(300))
        return {"input": word, "output": word.capitalize()}

    path.write_text(
        json.dumps(
            {
                "train": [row() for _ in range(rows)],
                "validation": [row() for _ in range(4)],
                "test": [row() for _ in range(4)],
            }
        )
    )
    return path


def test_out_of_memory_is_retried_with_a_smaller_batch_and_adopted(
    dagster_home, tmp_path, tiny_model_dir, slurm_cluster
) -> None:
    """A batch that does not fit under --mem=3500M is killed by the cgroup (OUT_OF_MEMORY), then
    trained with a third of the batch (2025 is odd) and three times the accumulation; a second
    materialization adopts it."""
    assert slurm_cluster.config("TaskPlugin") == "task/cgroup", "the test cluster lacks cgroups"
    file = write_tiny_experiment(
        tmp_path,
        tiny_model_dir,
        long_words(tmp_path / "long.json"),
        name=f"oom_{uuid.uuid4().hex[:6]}",
        runs=OOM_RUN,
    )
    run_command(["ck-dagster", "register", file])
    exp = load_experiment(file)
    partition = exp.partition_key("big")
    materialize("run_config,checkpoint", [partition])
    first, second = sorted(jobs_named(exp, "big"), key=lambda s: int(s.job_id))
    assert (first.state, second.state) == (JobState.OUT_OF_MEMORY, JobState.COMPLETED)
    metadata = latest(partition)
    assert metadata["oom_retry"] and metadata["job_id"] == second.job_id
    assert [(a["job_id"], a["state"], a["args"]) for a in metadata["attempts"]] == [
        (first.job_id, "OUT_OF_MEMORY", []),
        (second.job_id, "COMPLETED", ["batch_size=675", "gradient_accumulation_steps=3"]),
    ]
    assert metadata["oom_retry_note"].startswith(f"job {first.job_id} ran out of memory")
    assert SlurmLauncher().accounting(second.job_id).state is JobState.COMPLETED

    materialize("checkpoint", [partition])  # trained with the retry's batch: adopted
    assert latest(partition)["status"] == "adopted"
    assert len(jobs_named(exp, "big")) == 2


def test_the_default_pool_holds_jobs_back_and_frees_a_killed_runs_slot(experiment) -> None:  # noqa: F811  (the imported fixture)
    """`slurm_jobs` at 1 slot: a second run waits (and says so) while the first one's job is
    in the queue; once that run is killed (SIGKILL, its job cancelled), its slot is freed and
    the waiting run's job submitted."""
    exp = experiment(LONG_RUN + SHORT_RUN)
    run_command(["dagster", "instance", "concurrency", "set", "slurm_jobs", "1"])
    holder = start_materialize(exp.partition_key("long"))
    long_job = wait_running(exp, "long")
    waiting = start_materialize(exp.partition_key("one"))
    lines = []
    assert waiting.stdout is not None
    for line in waiting.stdout:
        lines.append(line)
        if "waiting for a free slot of the job pool" in line:
            break
    assert jobs_named(exp, "one") == [], "submitted although the only slot was taken"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    SlurmLauncher().cancel(long_job)
    output = "".join(lines) + waiting.communicate(timeout=600)[0]
    assert waiting.returncode == 0, output
    assert "freed pool slots of run" in output
    [job] = jobs_named(exp, "one")
    assert job.state is JobState.COMPLETED
    started = SlurmLauncher().accounting(job.job_id).start_time
    ended = SlurmLauncher().accounting(long_job).end_time
    assert started and ended and started >= ended, "both jobs were in the queue at once"


def test_ctrl_c_cancels_the_training_job(experiment) -> None:  # noqa: F811  (the imported fixture)
    """SIGINT, as Ctrl-C in a terminal sends it, to `dagster asset materialize`."""
    exp = experiment(LONG_RUN)
    process = start_materialize(exp.partition_key("long"))
    job_id = wait_running(exp, "long")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert f"cancelled job(s) {job_id}" in output, output
    deadline = time.monotonic() + 30
    while jobs_named(exp, "long")[0].state is not JobState.CANCELLED:
        assert time.monotonic() < deadline, jobs_named(exp, "long")
        time.sleep(0.5)
