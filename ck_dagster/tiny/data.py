"""Made-up words, and the capitalization data set the tiny model is fine-tuned and scored on.

Words are pronounceable nonsense built from syllables, so nothing is downloaded and a seed
reproduces the same data anywhere.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ck_dagster.fileio import atomic_write_text

_CONSONANTS = "bcdfghjklmnpqrstvwxyz"
_VOWELS = "aeiou"
_CODAS = "lmnrst"


def made_up_word(rng: random.Random, *, min_len: int = 3, max_len: int = 8) -> str:
    """One lowercase nonsense word of ``min_len``-``max_len`` letters; any letter may start it."""
    length = rng.randint(min_len, max_len)
    word = rng.choice(_CONSONANTS + _VOWELS)
    while len(word) < length:
        if word[-1] in _VOWELS:
            word += rng.choice(_CONSONANTS + _CODAS)
        else:
            word += rng.choice(_VOWELS)
    return word


def made_up_words(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct made-up words, in the order drawn."""
    words: dict[str, None] = {}
    while len(words) < count:
        words[made_up_word(rng)] = None
    return list(words)


def make_capitalization_dataset(
    path: Path, *, n_train: int = 400, n_validation: int = 50, n_test: int = 100, seed: int = 0
) -> Path:
    """Write ``{"train": [...], "validation": [...], "test": [...]}`` of word -> Word rows.

    Every word appears in one split only, so the test split measures generalization.
    """
    words = made_up_words(n_train + n_validation + n_test, random.Random(seed))
    bounds = {
        "train": (0, n_train),
        "validation": (n_train, n_train + n_validation),
        "test": (n_train + n_validation, len(words)),
    }
    splits = {
        name: [{"input": w, "output": w.capitalize()} for w in words[start:end]]
        for name, (start, end) in bounds.items()
    }
    atomic_write_text(path, json.dumps(splits, indent=1) + "\n")
    return path
