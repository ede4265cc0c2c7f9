"""The int8 check finds every label int8 changed while running fp32 on a fraction of the texts."""

from __future__ import annotations

import numpy as np
import pytest

from training.precision import fp32_labels, margin_moves, margins


def test_margins_and_moves() -> None:
    int8 = np.array([[2.0, 1.0, 0.5], [0.0, 0.1, -1.0]], dtype=np.float32)
    fp32 = np.array([[2.0, 1.3, 0.5], [0.2, 0.1, -1.0]], dtype=np.float32)
    assert margins(int8) == pytest.approx([1.0, 0.1])
    # Row 0: int8's gap top-vs-second is 1.0, fp32's 0.7. Row 1: the top is label 1 (0.1 vs 0.0).
    assert margin_moves(int8, fp32) == pytest.approx([0.3, 0.2])


def test_screen_finds_every_flip_and_scores_a_fraction() -> None:
    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(2000, 3)).astype(np.float32)
    int8 = fp32 + rng.uniform(-0.05, 0.05, size=fp32.shape).astype(np.float32)
    flips = int((int8.argmax(1) != fp32.argmax(1)).sum())
    assert flips > 0  # otherwise the test could not fail
    scored: list[int] = []

    def score(rows: list[int]) -> np.ndarray:
        scored.extend(rows)
        return fp32[rows]

    labels, check = fp32_labels(int8, score, seed=0, sample_size=64)
    assert (labels == fp32.argmax(1)).all()
    assert len(set(scored)) == len(scored) == check["fp32_scored"]
    assert check["fp32_scored"] < len(fp32) // 4
    assert 0 < check["margin_move_q99"] <= 0.1


def test_small_sets_are_scored_in_full() -> None:
    int8 = np.eye(3, dtype=np.float32)
    labels, check = fp32_labels(int8, lambda rows: int8[rows][:, ::-1], seed=0)
    assert labels.tolist() == [2, 1, 0]
    assert check["fp32_scored"] == 3
