"""What a training job leaves in ``<run>/artifacts``: epoch checkpoints and the loss log.

torchtune writes ``epoch_<N>/`` folders (weights, adapter, config, tokenizer files), the config
it trained with (``torchtune_config.yaml``, from every metric logger) and, with its DiskLogger,
``logs/log_<unixtime>.txt`` lines such as ``Step 12 | loss:1.93 lr:0.0001``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from ck_dagster.finetune.merge import config_leaves

_EPOCH = re.compile(r"^epoch_(\d+)$")
#: a shard of torchtune's HF weights (it writes :data:`SAFETENSORS_INDEX` beside them).
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.safetensors$")
#: how torchtune names the index of a sharded (or any saved) safetensors checkpoint.
SAFETENSORS_INDEX = "model.safetensors.index.json"
_STEP = re.compile(r"^Step (\d+) \| (.*)$")
#: the config torchtune records in its output_dir when training starts (CLI overrides included).
TRAINED_CONFIG = "torchtune_config.yaml"
#: what ck_dagster's recipes write when training has finished.
FINISHED = "ck_dagster_finished.json"
#: what an out-of-memory retry changes, keeping their product (the effective batch) the same.
_BATCH_KEYS = ("batch_size", "gradient_accumulation_steps")
#: what a job that resumes from a saved epoch adds to the run's config (training.resume).
RESUME_KEYS = (
    "resume_from_checkpoint",
    "checkpointer.recipe_checkpoint",
    "checkpointer.adapter_checkpoint",
    "checkpointer.checkpoint_files",
)
#: files that hold model weights in an epoch folder.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class EpochCheckpoint:
    """One saved epoch: its folder and the files in it with their sizes."""

    epoch: int
    path: Path
    files: dict[str, int]

    @property
    def has_weights(self) -> bool:
        """Whether the epoch holds weights (or an adapter), every weights file written to its
        end: a job stopped while saving leaves a file cut short, which is no checkpoint."""
        weights = [name for name in self.files if name.endswith(WEIGHT_SUFFIXES)]
        return (
            bool(weights)
            and all(is_whole(self.path / name) for name in weights)
            and not self.missing_shards()
        )

    def missing_shards(self) -> list[str]:
        """The shards and index that sharded weights (``model-00001-of-00004.safetensors``)
        need and the folder lacks: loading them needs every shard and the index."""
        missing = []
        for name in self.files:
            shard = _SHARD.search(name)
            if shard is None:
                continue
            stem, count = name[: shard.start()], int(shard.group(2))
            wanted = [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
            wanted.append((Path(name).parent / SAFETENSORS_INDEX).as_posix())
            missing += [w for w in wanted if w not in self.files and w not in missing]
        return missing

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())


@dataclass(frozen=True)
class TrainingLog:
    """The metrics torchtune logged, by step (the last log file of the run)."""

    path: Path | None
    steps: list[dict[str, float]] = field(default_factory=list)

    @property
    def losses(self) -> list[tuple[int, float]]:
        return [(int(row["step"]), row["loss"]) for row in self.steps if "loss" in row]

    @property
    def final_loss(self) -> float | None:
        losses = self.losses
        return losses[-1][1] if losses else None

    @property
    def validation_losses(self) -> list[tuple[int, float]]:
        """``val_loss`` by step, as ck_dagster's recipes log it (validation_during_training)."""
        return [(int(row["step"]), row["val_loss"]) for row in self.steps if "val_loss" in row]


def is_whole(path: Path) -> bool:
    """Whether a weights file was written to its end, as far as its format tells: a
    safetensors file is as long as its header says, a torch zip (``.pt``, ``.bin``) ends with
    its central directory; an empty file is not; a legacy pickle cannot tell (whole)."""
    try:
        with path.open("rb") as handle:
            if path.suffix == ".safetensors":
                return _safetensors_length(handle) == path.stat().st_size
            start = handle.read(4)
            if start == b"PK\x03\x04":
                return zipfile.is_zipfile(handle)
            return bool(start)  # empty: cut short before anything was written
    except (OSError, ValueError, KeyError, TypeError, IndexError):  # unreadable: not whole
        return False


def _safetensors_length(handle: BinaryIO) -> int:
    """The length a safetensors file has when whole: 8 bytes of header size, the JSON header,
    then the tensors up to the last one's end offset (ValueError when unreadable)."""
    size = int.from_bytes(handle.read(8), "little")
    if size <= 0 or size > 100_000_000:
        raise ValueError("not a safetensors header")
    header = json.loads(handle.read(size))
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict)
    ]
    return 8 + size + max(ends, default=0)


def epoch_checkpoints(artifacts: Path) -> list[EpochCheckpoint]:
    """The ``epoch_<N>`` folders under ``artifacts``, in epoch order."""
    found = []
    if artifacts.is_dir():
        for child in artifacts.iterdir():
            match = _EPOCH.match(child.name)
            if match and child.is_dir():
                files = {
                    p.relative_to(child).as_posix(): p.stat().st_size
                    for p in sorted(child.rglob("*"))
                    if p.is_file()
                }
                found.append(EpochCheckpoint(int(match.group(1)), child, files))
    return sorted(found, key=lambda c: c.epoch)


def is_complete(artifacts: Path, expected: Iterable[int]) -> bool:
    """Whether every ``expected`` epoch has been saved with weights (or an adapter); with none
    expected (``epochs_to_save: none``), whether ck_dagster's recipe finished."""
    expected = set(expected)
    if not expected:
        return (artifacts / FINISHED).is_file()
    return expected <= {c.epoch for c in epoch_checkpoints(artifacts) if c.has_weights}


def config_differences(artifacts: Path, config: Mapping[str, Any]) -> list[str]:
    """Where the config the saved checkpoints were trained with differs from ``config``: the
    dotted paths, ``[TRAINED_CONFIG + " missing"]`` when torchtune recorded none, [] when the
    same. A halved batch with doubled accumulation (an out-of-memory retry) is the same."""
    try:
        trained = yaml.safe_load((artifacts / TRAINED_CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        trained = None
    if not isinstance(trained, dict):
        return [f"{TRAINED_CONFIG} missing"]
    return compare_configs(trained, config)


def compare_configs(trained: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The dotted paths where two torchtune configs differ (the same effective batch is the
    same, and so is a resume of the run from one of its saved epochs)."""
    ours, theirs = dict(config_leaves(config)), dict(config_leaves(trained))
    ignored = set(_BATCH_KEYS) | (set(RESUME_KEYS) if theirs.get(RESUME_KEYS[0]) is True else set())
    differences = [
        path
        for path in dict.fromkeys([*ours, *theirs])
        if path not in ignored and ours.get(path) != theirs.get(path)
    ]
    if _effective_batch(ours) != _effective_batch(theirs):
        differences.append("batch_size")
    return differences


def _effective_batch(leaves: Mapping[str, Any]) -> object:
    batch, accumulation = leaves.get("batch_size"), leaves.get("gradient_accumulation_steps")
    if isinstance(batch, int) and isinstance(accumulation, (int, type(None))):
        return batch * (accumulation or 1)
    return batch, accumulation


def read_training_log(artifacts: Path) -> TrainingLog:
    """Parse the newest DiskLogger file under ``artifacts/logs``."""
    logs = sorted((artifacts / "logs").glob("log_*.txt"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return TrainingLog(None)
    steps = []
    for line in logs[-1].read_text(errors="replace").splitlines():
        match = _STEP.match(line.strip())
        if not match:
            continue
        row: dict[str, float] = {"step": float(match.group(1))}
        for item in match.group(2).split():
            name, _, value = item.partition(":")
            try:
                row[name] = float(value)
            except ValueError:
                continue
        steps.append(row)
    return TrainingLog(logs[-1], steps)


def set_aside(artifacts: Path) -> Path | None:
    """Move saved checkpoints out of the way before a new training job, never deleting them.

    Returns where they went (``artifacts.previous-<time>``), or None when there were none.
    """
    if not epoch_checkpoints(artifacts) and not (artifacts / FINISHED).exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = artifacts.with_name(f"{artifacts.name}.previous-{stamp}")
    suffix = 1
    while target.exists():
        target = artifacts.with_name(f"{artifacts.name}.previous-{stamp}-{suffix}")
        suffix += 1
    shutil.move(str(artifacts), str(target))
    return target
