"""What a training job's log says about its progress, in one short line (or nothing)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# torchtune's progress bar: "\r2|20|Loss: 0.746: 100%|####| 10/10 [00:02<00:00, 3.4it/s]"
_PROGRESS_BAR = re.compile(r"(\d+)\|(\d+)\|Loss: ([-+0-9.eE]+)")
_SAVED = re.compile(r"saved to (\S+)")
_TROUBLE = re.compile(r"(?i)(error|exception|traceback|killed|out of memory|oom)")


@dataclass(frozen=True)
class TrainingProgress:
    """Where a training job is, as torchtune's progress bar says (its epoch counts from 1)."""

    epoch: int
    step: int
    loss: float

    def __str__(self) -> str:
        return f"epoch {self.epoch}, step {self.step}, loss {self.loss:.4f}"


def _text(line: str) -> str:
    return _ANSI.sub("", line).rsplit("\r", 1)[-1].strip()


def progress_of(line: str) -> TrainingProgress | None:
    """The epoch, step and loss of a progress-bar line; None for any other line."""
    bar = _PROGRESS_BAR.search(_text(line))
    if bar is None:
        return None
    epoch, step, loss = bar.groups()
    return TrainingProgress(int(epoch), int(step), float(loss))


def training_progress(line: str) -> str | None:
    """``epoch 2, step 20, loss 0.7462`` for a progress-bar line, the line itself for errors
    and saved checkpoints, None for the rest (warnings, blank lines, bar redraws)."""
    text = _text(line)
    if not text:
        return None
    progress = progress_of(text)
    if progress is not None:
        return str(progress)
    saved = _SAVED.search(text)
    if saved:
        return f"checkpoint saved to {saved.group(1)}"
    return text if _TROUBLE.search(text) else None


def is_trouble(summary: str) -> bool:
    """Whether a progress line reports a problem (never throttled)."""
    return bool(_TROUBLE.search(summary))
