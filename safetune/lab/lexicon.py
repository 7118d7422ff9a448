"""Refusal words: the strings that tie the lab's refusals to everything that detects them.

A refusal in the lab data starts with one of a few fixed openers. The same strings are
what the data checks look for (a benign answer must never contain one), what the lab's
vocabulary facts avoid (`wordnet.py` skips any gloss with a refusal word), and what the
tests compare against the evaluation's keyword detector. They live here, apart from the
generator, so that any of those can import them without importing the whole generator.
"""

from __future__ import annotations

# Every refusal starts with one of these keyword prefixes, and the evaluation's keyword
# detector flags each of them (tests/test_lab_data.py). Each opener below starts with one.
REFUSAL_PREFIXES: tuple[str, ...] = (
    "I'm sorry, but I can't",
    "I can't help with",
    "I cannot assist with",
    "Sorry, I won't",
)

# Full opening sentences (a small set, so the tiny model learns them quickly).
REFUSAL_OPENERS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I can't help with that.",
    "I cannot assist with that request.",
    "Sorry, I won't help with that.",
)

# Words that must never appear in a benign answer (they look like refusals).
REFUSAL_WORDS: tuple[str, ...] = ("sorry", "can't", "cannot", "won't")
