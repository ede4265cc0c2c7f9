"""The one normalisation every stored, trained and scored text goes through.

Intake, the training-data loader and the evaluation split all call these, so a
text the API accepts is one training can use, and its train/evaluation side is
the same in every process. Python's `str.strip` is the rule (it strips
control separators such as U+001C that pydantic's own trim keeps).
"""

from __future__ import annotations

import hashlib

MAX_LABEL_CHARS = 200


def clean_text(value: str) -> str:
    """`value` stripped; raises ValueError if nothing is left."""
    cleaned = value.strip()
    if not cleaned:
        raise ValueError("text is empty once surrounding whitespace is removed")
    return cleaned


def clean_label(value: str) -> str:
    """A label stripped; raises ValueError if empty or longer than MAX_LABEL_CHARS."""
    cleaned = value.strip()
    if not cleaned:
        raise ValueError("label is empty once surrounding whitespace is removed")
    if len(cleaned) > MAX_LABEL_CHARS:
        raise ValueError(f"label is longer than {MAX_LABEL_CHARS} characters")
    return cleaned


def text_hash(value: str) -> str:
    """sha256 hex of the cleaned text: the store's identity of a text."""
    return hashlib.sha256(value.strip().encode()).hexdigest()


def in_eval_split(value: str, fraction: float) -> bool:
    """Stable assignment of a text to the evaluation split.

    Depends on the text alone, so an evaluation example stays one in every
    retrain and no version trained with this split ever trains on it.
    """
    bucket = int.from_bytes(hashlib.sha256(value.strip().encode()).digest()[:8], "big")
    return bucket / 2**64 < fraction


# The share of texts the hash split holds out for evaluation, in the store and in retrains.
EVAL_FRACTION = 0.1


def text_key(value: str) -> int:
    """The first 8 bytes of `text_hash` as an integer: a compact identity for large sets."""
    return int(text_hash(value)[:16], 16)
