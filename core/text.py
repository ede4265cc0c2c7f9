"""The one normalisation every stored, trained and scored text goes through.

Intake, the store, the retrain planner and the evaluation split all call
these, so a text the API accepts is one training can use, and its
train/evaluation side is the same in every process. Python's `str.strip` is the
rule for surrounding space (it strips control separators such as U+001C that
pydantic's own trim keeps). What is stored must be storable on both backends:
PostgreSQL's text cannot hold U+0000, and no UTF-8 database can hold a lone
surrogate (JSON's "\\ud800"), so both are refused everywhere, not only where
PostgreSQL would fail. A label or source is a name a person reads, so it needs
a visible character: "\\u200b" alone is no label.
"""

from __future__ import annotations

import hashlib
import unicodedata

MAX_LABEL_CHARS = 200
# Unicode categories that show something on their own: letters, numbers, punctuation,
# symbols. Separators, controls, format characters (U+200B), marks and private use do not.
VISIBLE_CATEGORIES = frozenset("LNPS")
SURROGATES = range(0xD800, 0xE000)


def is_visible(char: str) -> bool:
    return unicodedata.category(char)[0] in VISIBLE_CATEGORIES


def check_storable(value: str) -> str:
    """`value` unchanged; raises ValueError naming the first character no database can store."""
    for position, char in enumerate(value):
        if char == "\x00" or ord(char) in SURROGATES:
            what = "U+0000 (NUL)" if char == "\x00" else f"a lone surrogate U+{ord(char):04X}"
            raise ValueError(
                f"contains {what} at character {position}, which the database cannot store; "
                "remove it"
            )
    return value


def clean_text(value: str) -> str:
    """`value` stripped; raises ValueError if nothing is left or it cannot be stored."""
    cleaned = check_storable(value).strip()
    if not cleaned:
        raise ValueError("text is empty once surrounding whitespace is removed")
    return cleaned


def clean_name(value: str) -> str:
    """A label or source stripped; raises ValueError unless it is a storable, visible name
    of at most MAX_LABEL_CHARS characters."""
    cleaned = check_storable(value).strip()
    if not cleaned:
        raise ValueError("is empty once surrounding whitespace is removed")
    if not any(map(is_visible, cleaned)):
        raise ValueError(
            "has no visible character (a letter, digit, punctuation mark or symbol); "
            "send a name a person can read"
        )
    if len(cleaned) > MAX_LABEL_CHARS:
        raise ValueError(f"is longer than {MAX_LABEL_CHARS} characters")
    return cleaned


def clean_label(value: str) -> str:
    """A label stripped; raises ValueError as `clean_name` does, naming the label."""
    try:
        return clean_name(value)
    except ValueError as exc:
        raise ValueError(f"label {exc}") from None


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
