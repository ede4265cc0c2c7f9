"""Bad data is refused before training, with a message that names the row and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.text import in_eval_split
from training.data import DataError, hash_split, load, stratified_split


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def balanced_rows(n: int = 5) -> str:
    return "".join(f"good text {i},pos\nbad text {i},neg\n" for i in range(n))


def test_missing_columns_lists_what_the_file_has(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "sentence,label\nhello,pos\n")
    with pytest.raises(DataError, match=r"column\(s\) text not found.*has columns sentence, label"):
        load(path)


def test_other_column_names_can_be_chosen(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "sentence,sentiment\n" + balanced_rows())
    data = load(path, text_column="sentence", label_column="sentiment")
    assert data.label_names == ("neg", "pos")
    assert len(data) == 10


def test_empty_text_names_the_row(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,label\n" + balanced_rows() + "   ,pos\n")
    with pytest.raises(DataError, match=r"row 12: 'text' is empty"):
        load(path)


def test_missing_label_names_the_row(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,label\nfine words,\n" + balanced_rows())
    with pytest.raises(DataError, match=r"row 2: 'label' is missing; every row needs a label"):
        load(path)


def test_non_text_jsonl_value_is_refused(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"t {i}", "label": "a" if i % 2 else "b"}) for i in range(10)]
    lines.insert(3, json.dumps({"text": 42, "label": "a"}))
    path = write(tmp_path, "d.jsonl", "\n".join(lines))
    with pytest.raises(DataError, match=r"row 4: 'text' must be text, got int"):
        load(path)


def test_malformed_jsonl_line_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"line 2: not valid JSON"):
        load(path)


def test_single_class_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,label\n" + "".join(f"t{i},pos\n" for i in range(9)))
    with pytest.raises(DataError, match=r"only one label \(pos\); a classifier needs at least two"):
        load(path)


def test_class_too_small_to_split_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,label\n" + balanced_rows() + "odd one,meh\n")
    with pytest.raises(DataError, match=r"'meh' has 1; each label needs at least 4"):
        load(path)


def test_conflicting_labels_name_both_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path, "d.csv", "text,label\nsame words,pos\n" + balanced_rows() + "same words,neg\n"
    )
    with pytest.raises(
        DataError, match=r"rows 2 and 13 have the same text with labels 'pos' and 'neg'"
    ):
        load(path)


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", b"text,label\nfine,pos\nbad \xff byte,neg\n")
    with pytest.raises(
        DataError, match=r"line 3 has bytes that are not UTF-8.*re-save the file as UTF-8"
    ):
        load(path)


def test_unknown_label_against_a_fixed_label_set(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,label\n" + balanced_rows() + "x,postive\n")
    with pytest.raises(DataError, match=r"'postive' are not one of neg, pos"):
        load(path, label_names=("neg", "pos"), for_training=False)


def test_exact_duplicates_are_dropped_not_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,label\n" + balanced_rows() + "good text 0,pos\n")
    assert len(load(path)) == 10


def test_hash_split_is_stable_and_disjoint(sentiment_csv: Path) -> None:
    data = load(sentiment_csv)
    train, held = hash_split(data, 0.2)
    again_train, again_held = hash_split(data, 0.2)
    assert held.texts == again_held.texts and train.texts == again_train.texts
    assert not set(train.texts) & set(held.texts)
    assert len(train) + len(held) == len(data)
    assert 0.1 < len(held) / len(data) < 0.3
    # Membership depends on the text alone: a text is evaluation data in every future split.
    assert all(in_eval_split(t, 0.2) for t in held.texts)


def test_stratified_split_keeps_every_label_on_both_sides(sentiment_csv: Path) -> None:
    data = load(sentiment_csv)
    rest, held = stratified_split(data, 0.1, seed=0)
    assert set(held.labels) == set(rest.labels) == {0, 1, 2}
    assert not set(rest.texts) & set(held.texts)


def test_fingerprint_ignores_order_but_not_labels(tmp_path: Path) -> None:
    a = load(write(tmp_path, "a.csv", "text,label\n" + balanced_rows()))
    b = load(
        write(
            tmp_path, "b.csv", "text,label\n" + "".join(reversed(balanced_rows().splitlines(True)))
        )
    )
    c = load(
        write(
            tmp_path,
            "c.csv",
            "text,label\n" + balanced_rows().replace("good text 0,pos", "good text 0,neg"),
        )
    )
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
