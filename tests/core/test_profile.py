"""The reference profile: what it keeps of an evaluation, and the accuracy it estimates."""

from __future__ import annotations

import numpy as np

from core import profile

LABELS = ["negative", "neutral", "positive"]


def test_a_profile_keeps_the_mix_the_histograms_and_the_accuracy_per_confidence_bin() -> None:
    probabilities = np.array(
        [[0.95, 0.05], [0.92, 0.08], [0.15, 0.85], [0.4, 0.6], [0.55, 0.45], [0.97, 0.03]]
    )
    truth = [0, 1, 1, 0, 0, 0]  # wrong at 0.92 and at 0.6
    built = profile.build(probabilities, truth, ["negative", "positive"])
    assert built.label_counts == [4, 2] and built.texts == 6
    assert built.accuracy == round(4 / 6, 6)
    assert np.isclose(sum(built.confidence_histogram), 1.0, atol=1e-5)
    assert built.confidence_histogram[9] == 0.5
    assert built.accuracy_by_confidence[9] == round(2 / 3, 6)  # 0.95 and 0.97 right, 0.92 wrong
    assert built.accuracy_by_confidence[6] == 0.0 and built.accuracy_by_confidence[2] is None
    assert built.confidence_sample == sorted(built.confidence_sample)
    # Traffic like the evaluation's reads the evaluation's accuracy.
    assert np.isclose(built.estimated_accuracy(np.array(built.confidence_sample)), 4 / 6)


def test_one_wrong_text_in_a_bin_is_weak_evidence_and_many_are_strong() -> None:
    """36 evaluation texts as the tests' tiny model has them: one at 0.499, wrong, alone in
    its bin. Live traffic with 10% of its confidences in that bin is not an accuracy drop of
    10 points (which read as drift), but a bin where many evaluation texts were wrong is."""
    confidences = [0.499] + [0.55] * 14 + [0.65] * 9 + [0.99] * 12
    built = profile.build(_rows(confidences), [1] + [0] * 35, LABELS)
    assert built.accuracy_by_confidence[4] == 0.0 and np.isclose(built.accuracy, 35 / 36)
    live = np.array([0.49] * 20 + [0.55] * 80 + [0.65] * 40 + [0.99] * 60)
    assert built.accuracy - built.estimated_accuracy(live) < 0.05

    confidences = [0.65] * 40 + [0.99] * 60  # right at 0.99; 20 of 40 wrong at 0.65
    built = profile.build(_rows(confidences), [1] * 20 + [0] * 80, LABELS)
    assert built.accuracy_by_confidence[6] == 0.5
    live = np.array([0.65] * 160 + [0.99] * 40)  # mostly where it was wrong half the time
    assert built.accuracy - built.estimated_accuracy(live) > 0.15
    assert built.estimated_accuracy(np.array([0.99] * 200)) > built.accuracy  # and better there


def _rows(confidences: list[float]) -> np.ndarray:
    """Probabilities over LABELS whose first label has each confidence."""
    return np.array([[c, (1 - c) / 2, (1 - c) / 2] for c in confidences])


def test_a_large_evaluation_is_kept_as_quantiles() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5000, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    built = profile.build(probabilities, rng.integers(0, 3, 5000).tolist(), ["a", "b", "c"])
    assert len(built.confidence_sample) == profile.SAMPLE_SIZE
    assert abs(np.median(built.confidence_sample) - np.median(probabilities.max(axis=1))) < 0.01
    assert np.isclose(built.label_share().sum(), 1.0)
