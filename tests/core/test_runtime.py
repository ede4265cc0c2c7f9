"""How the runtime cuts a batch into runs: every text once, padding and rows bounded, and
with more than one thread, runs side by side."""

from __future__ import annotations

import random

import pytest

from core import registry
from core.runtime import Classifier, feeds, length_runs, session_options
from tests.helpers import CountingRuns, mixed_texts


@pytest.mark.parametrize(("max_padding", "max_rows"), [(0.0, 64), (0.125, 64), (0.5, 8), (0, 1)])
def test_runs_cover_every_text_once_within_the_padding_and_row_bounds(
    max_padding: float, max_rows: int
) -> None:
    lengths = [random.Random(seed).randint(3, 128) for seed in range(300)]
    runs = length_runs(lengths, max_padding, max_rows)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    for run in runs:
        real = sum(lengths[i] for i in run)
        assert max(lengths[i] for i in run) * len(run) <= real * (1 + max_padding)
        assert 1 <= len(run) <= max_rows


def test_exact_length_groups_when_no_padding_is_allowed() -> None:
    runs = length_runs([5, 9, 5, 9, 7], 0.0, 64)
    assert runs == [[0, 2], [4], [1, 3]]


def test_a_text_longer_than_the_bound_allows_still_gets_a_run_of_its_own() -> None:
    assert length_runs([2, 100], 0.125, 64) == [[0], [1]]


def test_feeds_pad_right_and_mask_the_padding() -> None:
    batch = feeds([[101, 7, 102], [101, 102]])
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_spinning_can_be_turned_off_for_oversubscribed_workers() -> None:
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ORT's default: spin
        session_options(2).get_session_config_entry("session.intra_op.allow_spinning")
    parked = session_options(2, spin=False)
    assert parked.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_with_two_threads_a_batch_runs_side_by_side_on_one_thread_each(
    tiny_version: str,
) -> None:
    version = registry.get(tiny_version)
    two = Classifier(version.path, version.max_length, threads=2)
    assert two.side_by_side is not None
    runs = two.side_by_side.session = CountingRuns(two.side_by_side.session)  # type: ignore[assignment]
    texts = mixed_texts(40)  # 1 to ~60 words: several runs
    together = two.logits(texts)
    batch_runs = runs.runs
    assert batch_runs > 1  # every run of the batch went to the one-thread callers
    two.logits(texts[:1])
    assert runs.runs == batch_runs  # a lone run keeps both threads of the main session
    one = Classifier(version.path, version.max_length, threads=1)
    assert one.side_by_side is None
    assert (together == one.logits(texts)).all()  # the same bits, in input order
