"""Reading, validating and splitting labeled text, before any model is touched.

Every problem is found in one pass and reported together, each with its row
and what to change, so a user fixes a file once instead of once per error.
Nothing here imports torch: the store and the CLI validate data cheaply.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.model_selection import train_test_split

from core.text import in_eval_split

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
# A label needs one example in each of train, dev and eval, and at least two to learn from.
MIN_PER_LABEL = 4


class DataError(ValueError):
    """The data cannot be trained on; the message lists every problem and its fix."""


@dataclass(frozen=True)
class Example:
    row: int
    text: str
    label: str


@dataclass(frozen=True)
class LabeledData:
    """Clean examples with labels as indices into `label_names`."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int]) -> LabeledData:
        idx = list(indices)
        return LabeledData(
            tuple(self.texts[i] for i in idx), tuple(self.labels[i] for i in idx), self.label_names
        )

    def label_strings(self) -> list[str]:
        return [self.label_names[i] for i in self.labels]

    def fingerprint(self) -> str:
        """Order-independent sha256 of (text, label) pairs: same data, same fingerprint."""
        digest = hashlib.sha256()
        for text, label in sorted(zip(self.texts, self.label_strings(), strict=True)):
            digest.update(text.encode())
            digest.update(b"\x1f")
            digest.update(label.encode())
            digest.update(b"\x1e")
        return digest.hexdigest()


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line} has bytes that are not UTF-8 (byte offset {exc.start}); "
            "re-save the file as UTF-8"
        ) from exc


def _read_csv(text: str, path: Path, text_col: str, label_col: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    missing = [c for c in (text_col, label_col) if c not in columns]
    if missing:
        raise DataError(
            f"{path}: column(s) {', '.join(missing)} not found; the file has columns "
            f"{', '.join(columns) or '(none)'}; pass --text-column/--label-column to choose others"
        )
    rows = []
    for record in reader:
        rows.append(
            {"row": reader.line_num, "text": record.get(text_col), "label": record.get(label_col)}
        )
    return rows


def _read_jsonl(text: str, path: Path, text_col: str, label_col: str) -> list[dict[str, Any]]:
    rows = []
    errors = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            errors.append(
                f"line {number}: expected a JSON object with {text_col!r} and {label_col!r}"
            )
            continue
        rows.append({"row": number, "text": record.get(text_col), "label": record.get(label_col)})
    if errors:
        raise DataError(f"{path}: " + "; ".join(errors[:MAX_REPORTED_ERRORS]))
    if rows and all(r["text"] is None and r["label"] is None for r in rows):
        raise DataError(
            f"{path}: no record has {text_col!r} or {label_col!r}; "
            "pass --text-column/--label-column to choose others"
        )
    return rows


def read_examples(
    path: Path, text_column: str = "text", label_column: str = "label"
) -> list[Example]:
    """Read a CSV (header row) or JSONL file and validate each row; raises DataError."""
    text = _decode(path)
    if path.suffix.lower() in {".jsonl", ".ndjson", ".json"}:
        rows = _read_jsonl(text, path, text_column, label_column)
    else:
        rows = _read_csv(text, path, text_column, label_column)
    errors: list[str] = []
    examples: list[Example] = []
    for r in rows:
        where = f"row {r['row']}"
        value, label = r["text"], r["label"]
        if value is None:
            errors.append(f"{where}: {text_column!r} is missing")
        elif not isinstance(value, str):
            errors.append(f"{where}: {text_column!r} must be text, got {type(value).__name__}")
        elif not value.strip():
            errors.append(f"{where}: {text_column!r} is empty")
        elif label is None or (isinstance(label, str) and not label.strip()):
            errors.append(f"{where}: {label_column!r} is missing; every row needs a label")
        elif not isinstance(label, str | int):
            errors.append(f"{where}: {label_column!r} must be a string, got {type(label).__name__}")
        else:
            examples.append(Example(r["row"], value.strip(), str(label).strip()))
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
        raise DataError(f"{path}: " + "; ".join(shown) + more)
    if not examples:
        raise DataError(f"{path}: no examples found")
    return examples


def build_dataset(
    examples: Sequence[Example],
    label_names: Sequence[str] | None = None,
    for_training: bool = True,
) -> LabeledData:
    """Deduplicate, refuse conflicts and too-small classes, and map labels to indices.

    `label_names` fixes the label set (e.g. the model's) instead of deriving it.
    Data only scored (`for_training=False`) may hold one label or few examples.
    """
    first_seen: dict[str, Example] = {}
    conflicts: list[str] = []
    for ex in examples:
        seen = first_seen.get(ex.text)
        if seen is None:
            first_seen[ex.text] = ex
        elif seen.label != ex.label:
            conflicts.append(
                f"rows {seen.row} and {ex.row} have the same text with labels "
                f"{seen.label!r} and {ex.label!r}; keep one"
            )
    if conflicts:
        raise DataError("conflicting labels: " + "; ".join(conflicts[:MAX_REPORTED_ERRORS]))
    unique = list(first_seen.values())
    if len(unique) < len(examples):
        log.info("dropped %d duplicate rows", len(examples) - len(unique))

    counts = Counter(ex.label for ex in unique)
    names = tuple(label_names) if label_names is not None else tuple(sorted(counts))
    unknown = sorted(set(counts) - set(names))
    if unknown:
        raise DataError(
            f"label(s) {', '.join(map(repr, unknown))} are not one of {', '.join(names)}"
        )
    if for_training and len(counts) < 2:
        raise DataError(
            f"found only one label ({', '.join(counts) or 'none'}); a classifier needs at least two"
        )
    small = {label: n for label, n in counts.items() if for_training and n < MIN_PER_LABEL}
    if small:
        detail = ", ".join(f"{label!r} has {n}" for label, n in sorted(small.items()))
        raise DataError(
            f"too few examples to split: {detail}; each label needs at least {MIN_PER_LABEL} "
            "(train, dev and eval each need one): add examples or drop the label"
        )
    index = {name: i for i, name in enumerate(names)}
    return LabeledData(
        tuple(ex.text for ex in unique), tuple(index[ex.label] for ex in unique), names
    )


def load(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    for_training: bool = True,
) -> LabeledData:
    return build_dataset(read_examples(path, text_column, label_column), label_names, for_training)


def hash_split(data: LabeledData, fraction: float) -> tuple[LabeledData, LabeledData]:
    """(train, eval) by `core.text.in_eval_split`; refuses a split leaving a label out of a side."""
    eval_idx = [i for i, t in enumerate(data.texts) if in_eval_split(t, fraction)]
    eval_set = set(eval_idx)
    train_idx = [i for i in range(len(data)) if i not in eval_set]
    train, held = data.subset(train_idx), data.subset(eval_idx)
    for part, name in ((train, "training"), (held, "evaluation")):
        missing = set(range(len(data.label_names))) - set(part.labels)
        if missing:
            labels = ", ".join(data.label_names[i] for i in sorted(missing))
            raise DataError(
                f"the hash split left no {name} example for label(s) {labels}; add examples"
            )
    return train, held


def stratified_split(
    data: LabeledData, fraction: float, seed: int, max_held: int | None = None
) -> tuple[LabeledData, LabeledData]:
    """(rest, held-out) keeping label proportions; `max_held` caps the held-out size."""
    n_classes = len(data.label_names)
    size = max(round(len(data) * fraction), n_classes)
    if max_held is not None:
        size = min(size, max_held)
    rest, held = train_test_split(
        list(range(len(data))), test_size=size, random_state=seed, stratify=list(data.labels)
    )
    return data.subset(rest), data.subset(held)


def write_csv(path: Path, rows: Iterable[tuple[str, str]]) -> int:
    """Write (text, label) rows as the `text,label` CSV `load` reads; returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for row in rows:
            writer.writerow(row)
            count += 1
    return count
