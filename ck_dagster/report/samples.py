"""Per-sample scores from inspect-ai ``.eval`` logs, for comparing runs on the same samples."""

from __future__ import annotations

from pathlib import Path

from ck_dagster.errors import CkError


def sample_scores(log: Path) -> dict[str, dict[str, float]]:
    """Scorer -> ``<sample id>#<epoch>`` -> the sample's score as a number (inspect's own
    conversion: correct 1, incorrect 0, partial 0.5); samples without a score are left out."""
    from inspect_ai.log import read_eval_log
    from inspect_ai.scorer import value_to_float

    try:
        eval_log = read_eval_log(str(log))
    except Exception as exc:  # inspect raises several kinds for a missing or damaged log
        raise CkError(
            f"{log}: not readable as an inspect log ({exc}); materialize eval_log "
            "again for this run"
        ) from None
    to_float = value_to_float()
    scores: dict[str, dict[str, float]] = {}
    for sample in eval_log.samples or []:
        for scorer, score in (sample.scores or {}).items():
            try:
                value = to_float(score.value)
            except (TypeError, ValueError):
                continue
            scores.setdefault(scorer, {})[f"{sample.id}#{sample.epoch}"] = value
    return scores
