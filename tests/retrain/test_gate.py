"""The quality gate's rule, in-process: each condition on predictions built to pass or fail it.

The bounds are real paired bootstraps over the texts given; the texts are many enough
(hundreds) that a difference of a few points is far outside the noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.settings import RetrainSettings
from retrain.gate import Evidence, Reference, compare, decide, macro_f1
from retrain.labels import LabelNoise, Support, support

SETTINGS = RetrainSettings(gate_margin=0.015, gate_min_eval=30, gate_min_new=30)
N_OLD, N_NEW = 600, 200


def flip(pred: np.ndarray, where: np.ndarray) -> np.ndarray:
    """`pred` made wrong at the indices `where` (2 classes)."""
    out = pred.copy()
    out[where] = 1 - out[where]
    return out


def evidence(**overrides: object) -> Evidence:
    """600 old texts the active model gets 80% right, 200 new ones it gets 50% right, and a
    candidate that keeps the old and learns the new (90%)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N_OLD + N_NEW)
    new = np.arange(N_OLD + N_NEW) >= N_OLD
    active = flip(y, np.r_[np.arange(0, N_OLD, 5), np.arange(N_OLD, N_OLD + N_NEW, 2)])
    candidate = flip(y, np.r_[np.arange(0, N_OLD, 5), np.arange(N_OLD, N_OLD + N_NEW, 10)])
    fields: dict[str, object] = {
        "y": y, "candidate": candidate, "active": active, "new": new, "n_classes": 2,
        "new_data": True,
    }  # fmt: skip
    return Evidence(**(fields | overrides))  # type: ignore[arg-type]


def verdicts(ev: Evidence, settings: RetrainSettings = SETTINGS) -> dict[str, str]:
    decision = decide(ev, settings)
    return {c["condition"]: c["verdict"] for c in decision.record["conditions"]}


def test_a_candidate_that_learns_the_new_slice_and_keeps_the_old_is_promoted() -> None:
    decision = decide(evidence(), SETTINGS)
    assert decision.promote, decision.message
    assert decision.record["new"]["difference"] > 0.2
    assert abs(decision.record["old"]["difference"]) < 1e-9
    assert decision.message.startswith("promoted: ")


def test_a_candidate_worse_on_the_old_slice_is_rejected_though_the_total_rises() -> None:
    ev = evidence()
    ev.candidate = flip(ev.candidate, np.arange(1, N_OLD, 10))  # 60 more old texts wrong
    decision = decide(ev, SETTINGS)
    assert decision.record["all"]["difference"] > 0
    assert not decision.promote
    assert verdicts(ev)["non-inferior on the old slice"] == "failed"
    assert "forgot" in decision.message


def test_a_refit_is_judged_with_its_own_wider_margin() -> None:
    # 60 more old texts wrong: about 10 points, beyond GATE_MARGIN, within a wide refit margin.
    settings = SETTINGS.model_copy(update={"gate_refit_margin": 0.15})
    warm = evidence()
    warm.candidate = flip(warm.candidate, np.arange(1, N_OLD, 10))
    assert not decide(warm, settings).promote
    refit = evidence(refit=True, candidate=warm.candidate)
    decision = decide(refit, settings)
    assert decision.promote, decision.message
    assert decision.record["margin"] == 0.15
    assert -0.15 < decision.record["old"]["lower_bound"] < -SETTINGS.gate_margin


def test_a_tiny_old_slice_drop_within_the_margin_is_promoted() -> None:
    ev = evidence()
    ev.candidate = flip(ev.candidate, np.array([1]))  # one old text: noise, not forgetting
    assert decide(ev, SETTINGS).promote


def test_a_candidate_significantly_worse_on_the_new_slice_is_rejected() -> None:
    ev = evidence()
    ev.active = ev.y.copy()  # the active model already knew the new texts
    ev.candidate = flip(ev.y, np.arange(N_OLD, N_OLD + N_NEW, 4))  # and the candidate unlearned
    assert verdicts(ev)["not worse on the new slice"] == "failed"
    assert not decide(ev, SETTINGS).promote


def test_a_new_slice_too_small_to_judge_is_said_so() -> None:
    ev = evidence()
    ev.new = np.arange(N_OLD + N_NEW) >= N_OLD + N_NEW - 10
    decision = decide(ev, SETTINGS)
    assert verdicts(ev)["not worse on the new slice"] == "not judged"
    assert "too few to judge" in str(decision.record["conditions"])


def test_the_chain_is_bounded_by_its_reference() -> None:
    ev = evidence()
    # The reference (where the chain started) was 10 points better on the old texts than
    # the active version, and the candidate stays at the active's level: each step was
    # within the margin, the chain is not.
    reference = flip(ev.y, np.arange(0, N_OLD, 10))
    comparable = ~ev.new
    ev.reference = Reference("model:root", reference, comparable)
    decision = decide(ev, SETTINGS)
    assert verdicts(ev)["chain bounded by its reference"] == "failed"
    assert not decision.promote and "model:root" in decision.message
    ev.reference = Reference("model:root", ev.active.copy() if ev.active is not None else ev.y,
                             comparable)  # fmt: skip
    assert decide(ev, SETTINGS).promote


def test_without_a_reference_the_chain_is_not_judged_and_says_why() -> None:
    ev = evidence(reference_missing="model:x is not incremental")
    decision = decide(ev, SETTINGS)
    assert decision.promote
    assert decision.record["reference"] == {"version": None, "reason": "model:x is not incremental"}


def noise(mean: float, stderr: float = 0.02, rows: int = 200) -> LabelNoise:
    return LabelNoise(Support(rows, mean, stderr), Support(500, 0.45, 0.01), 0, 0)


def test_labels_the_active_model_contradicts_are_rejected() -> None:
    ev = evidence(labels=noise(-0.13))  # it leans to another label for most new rows
    decision = decide(ev, SETTINGS)
    assert verdicts(ev)["plausible labels"] == "failed"
    assert not decision.promote and "suspect rows" in decision.message


def test_labels_the_active_model_supports_pass_even_on_a_topic_it_half_knows() -> None:
    ev = evidence(labels=noise(+0.06))  # weak support, far from its +0.45 on known labels
    assert verdicts(ev)["plausible labels"] == "passed"
    assert decide(ev, SETTINGS).promote


def test_labels_the_model_cannot_judge_need_the_candidate_to_have_learned_them() -> None:
    learned = evidence(labels=noise(0.0))  # no support either way; the new slice rose 40 pt
    assert verdicts(learned)["plausible labels"] == "passed"
    unproven = evidence(labels=noise(0.0))
    unproven.candidate = unproven.active.copy() if unproven.active is not None else unproven.y
    decision = decide(unproven, SETTINGS)
    assert verdicts(unproven)["plausible labels"] == "failed"
    assert "label more examples of this kind" in decision.message


def test_support_is_zero_for_a_model_that_ignores_the_text_and_signed_by_the_labels() -> None:
    lopsided = np.tile([0.2, 0.3, 0.5], (6, 1))  # one fixed guess, whatever the text
    labels = np.array([0, 0, 0, 1, 2, 0])
    assert support(lopsided, labels).mean() == pytest.approx(0.0)
    knowing = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]] * 2)
    right, wrong = np.array([0, 1, 2] * 2), np.array([1, 2, 0] * 2)
    assert support(knowing, right).mean() > 0 > support(knowing, wrong).mean()


def test_without_new_data_only_a_better_candidate_is_promoted() -> None:
    equal = evidence(new_data=False)
    equal.new = np.zeros(N_OLD + N_NEW, dtype=bool)
    equal.candidate = equal.active.copy() if equal.active is not None else equal.y
    decision = decide(equal, SETTINGS)
    assert not decision.promote and "no new data" in decision.message
    better = evidence(new_data=False)
    better.new = np.zeros(N_OLD + N_NEW, dtype=bool)
    assert decide(better, SETTINGS).promote


def test_no_active_model_means_promote() -> None:
    ev = evidence(active=None)
    decision = decide(ev, SETTINGS)
    assert decision.promote and "no active model" in decision.message


def test_too_few_evaluation_texts_reject_with_the_reason() -> None:
    y = np.array([0, 1] * 5)
    ev = Evidence(y, y.copy(), y.copy(), np.zeros(10, dtype=bool), 2, True)
    decision = decide(ev, SETTINGS)
    assert not decision.promote and "too few" in decision.message


def test_the_paired_bootstrap_bounds_bracket_the_difference() -> None:
    ev = evidence()
    c = compare(ev.y, ev.candidate, ev.active, 2, 0.95)  # type: ignore[arg-type]
    assert c.low < c.difference < c.high
    assert c.difference == pytest.approx(
        macro_f1(ev.y, ev.candidate, 2) - macro_f1(ev.y, ev.active, 2)  # type: ignore[arg-type]
    )


def test_macro_f1_counts_an_unknown_label_as_a_miss() -> None:
    y = np.array([0, 0, 1, 1])
    assert macro_f1(y, np.array([0, -1, 1, 1]), 2) < 1.0 == macro_f1(y, y, 2)
