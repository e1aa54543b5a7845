"""Going on from the last saved epoch after a job was stopped (time limit, preemption, node
failure), with torchtune 0.6.1's own resume.

After every epoch but the last, torchtune's recipes write ``recipe_state/recipe_state.pt`` (epochs
run, optimizer, data loader, seed) last, after the epoch's weights. Given
``resume_from_checkpoint=True``, the LoRA recipe reads the adapter from
``checkpointer.adapter_checkpoint`` (and the base model from ``checkpoint_dir``); the full recipe
reads the weights from ``checkpointer.checkpoint_files`` under ``output_dir``. Both read the
recipe state from ``checkpointer.recipe_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ck_dagster.training.artifacts import RESUME_KEYS, WEIGHT_SUFFIXES, epoch_checkpoints

#: torchtune's recipe state, relative to ``output_dir`` (``RECIPE_STATE_DIRNAME``).
RECIPE_STATE = "recipe_state/recipe_state.pt"
#: the adapter torchtune's LoRA recipe resumes from (torchtune's keys; the ``.safetensors`` twin
#: has PEFT's).
ADAPTER = "adapter_model.pt"


@dataclass(frozen=True)
class ResumePoint:
    """The epoch training goes on after, and the torchtune overrides that do so."""

    epoch: int
    overrides: tuple[str, ...]

    def args(self, previous: Sequence[str]) -> tuple[str, ...]:
        """``previous`` script arguments (e.g. an out-of-memory retry's batch) without an older
        resume's, then this resume's."""
        return (*without_resume(previous), *self.overrides)

    def describe(self) -> str:
        """What is resumed, for people and the checkpoint metadata."""
        return f"resumed from epoch_{self.epoch}, training on at epoch {self.epoch + 1}"


def without_resume(args: Sequence[str]) -> tuple[str, ...]:
    """Script arguments without those of a resume (to start from the beginning again)."""
    return tuple(a for a in args if a.partition("=")[0] not in RESUME_KEYS)


def resume_point(artifacts: Path, epochs: int) -> ResumePoint | None:
    """Where a stopped job of a run training ``epochs`` epochs into ``artifacts`` can go on: the
    last epoch saved whole (torchtune's recipe state written after it), when epochs are left;
    None otherwise (then nothing is resumed)."""
    state = artifacts / RECIPE_STATE
    if not state.is_file():
        return None
    written = state.stat().st_mtime
    # the state is written last: an epoch with a newer file was cut short while being saved
    saved = [
        c
        for c in epoch_checkpoints(artifacts)
        if c.has_weights and max((c.path / name).stat().st_mtime for name in c.files) <= written
    ]
    if not saved or saved[-1].epoch + 1 >= epochs:
        return None
    last = saved[-1]
    overrides = ["resume_from_checkpoint=True", f"checkpointer.recipe_checkpoint={RECIPE_STATE}"]
    adapters = sorted(name for name in last.files if Path(name).name == ADAPTER)
    if adapters:
        overrides.append(f"checkpointer.adapter_checkpoint={last.path.name}/{adapters[0]}")
    else:
        weights = sorted(
            f"{last.path.name}/{name}"
            for name in last.files
            if "/" not in name and name.endswith(WEIGHT_SUFFIXES)
        )
        overrides.append(f"checkpointer.checkpoint_files=[{','.join(weights)}]")
    return ResumePoint(last.epoch, tuple(overrides))
