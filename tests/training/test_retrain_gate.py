"""The quality gate: a candidate is promoted only if it is not worse than the active model."""

from __future__ import annotations

from training.retrain import gate


def test_no_active_model_means_promote() -> None:
    promote, reason = gate(0.5, None, 0.0)
    assert promote and "no active model" in reason


def test_equal_or_better_is_promoted_with_zero_tolerance() -> None:
    assert gate(0.80, 0.80, 0.0)[0]
    assert gate(0.81, 0.80, 0.0)[0]


def test_worse_is_rejected_unless_within_tolerance() -> None:
    promote, reason = gate(0.79, 0.80, 0.0)
    assert not promote and "the active version stays" in reason
    assert gate(0.79, 0.80, 0.02)[0]
    assert not gate(0.77, 0.80, 0.02)[0]
