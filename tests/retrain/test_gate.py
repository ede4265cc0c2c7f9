"""The quality gate's rule, in-process: promote only a candidate that is not worse, overall
and on the old slice, on enough texts."""

from __future__ import annotations

import numpy as np

from core.settings import RetrainSettings
from retrain.gate import decide, macro_f1

SETTINGS = RetrainSettings(gate_tolerance=0.0, gate_min_eval=20)


def arrays(*rows: list[int]) -> tuple[np.ndarray, ...]:
    return tuple(np.array(r, dtype=np.int64) for r in rows)


def test_no_active_model_means_promote() -> None:
    y, cand = arrays([0, 1], [0, 1])
    decision = decide(y, cand, None, np.zeros(2, dtype=bool), 2, SETTINGS)
    assert decision.promote and "no active model" in decision.message


def test_equal_or_better_is_promoted_with_zero_tolerance() -> None:
    y = np.array([0, 1] * 20)
    new = np.zeros(40, dtype=bool)
    assert decide(y, y.copy(), y.copy(), new, 2, SETTINGS).promote
    worse_active = y.copy()
    worse_active[:4] = 1 - worse_active[:4]
    better = decide(y, y.copy(), worse_active, new, 2, SETTINGS)
    assert better.promote and "difference 95% CI" in better.message
    low, high = better.record["difference_95ci"]
    assert 0 <= low <= high


def test_worse_is_rejected_unless_within_tolerance() -> None:
    y = np.array([0, 1] * 20)
    new = np.zeros(40, dtype=bool)
    cand = y.copy()
    cand[:2] = 1 - cand[:2]
    assert not decide(y, cand, y.copy(), new, 2, SETTINGS).promote
    tolerant = RetrainSettings(gate_tolerance=0.1, gate_min_eval=20)
    assert decide(y, cand, y.copy(), new, 2, tolerant).promote


def test_forgetting_the_old_slice_is_rejected_even_when_the_total_rises() -> None:
    # 40 old texts, 60 new ones: the candidate learned the new slice and forgot 6 old texts.
    y = np.array([0, 1] * 50)
    new = np.arange(100) >= 40
    active = y.copy()
    active[40:] = 0  # the active model knows nothing of the new slice
    cand = y.copy()
    cand[:6] = 1 - cand[:6]
    decision = decide(y, cand, active, new, 2, SETTINGS)
    assert decision.record["all"]["candidate_macro_f1"] > decision.record["all"]["active_macro_f1"]
    assert not decision.promote and "old slice" in decision.message


def test_too_few_evaluation_texts_reject_with_the_reason() -> None:
    y = np.array([0, 1] * 5)
    decision = decide(y, y.copy(), y.copy(), np.zeros(10, dtype=bool), 2, SETTINGS)
    assert not decision.promote and "too few" in decision.message


def test_macro_f1_counts_an_unknown_label_as_a_miss() -> None:
    y, pred = arrays([0, 0, 1, 1], [0, -1, 1, 1])
    assert macro_f1(y, pred, 2) < 1.0
