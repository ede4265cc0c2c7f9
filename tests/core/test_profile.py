"""The reference profile: what it keeps of an evaluation, and the accuracy it estimates."""

from __future__ import annotations

import numpy as np

from core import profile


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
    # Live confidences: a bin the evaluation saw takes its accuracy, an empty one its own value.
    assert np.isclose(built.estimated_accuracy(np.array([0.96, 0.25])), (2 / 3 + 0.25) / 2)


def test_a_large_evaluation_is_kept_as_quantiles() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5000, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    built = profile.build(probabilities, rng.integers(0, 3, 5000).tolist(), ["a", "b", "c"])
    assert len(built.confidence_sample) == profile.SAMPLE_SIZE
    assert abs(np.median(built.confidence_sample) - np.median(probabilities.max(axis=1))) < 0.01
    assert np.isclose(built.label_share().sum(), 1.0)
