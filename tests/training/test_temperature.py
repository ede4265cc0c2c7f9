"""Temperature scaling on logits whose true temperature is known."""

from __future__ import annotations

import numpy as np
import pytest

from core.runtime import softmax
from training.temperature import fit_temperature, reliability


def sampled(temperature: float, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / temperature): that T is the right one."""
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(n, 3)) * 4).astype(np.float32)
    p = softmax(logits / temperature)
    labels = np.array([rng.choice(3, p=row / row.sum()) for row in p], dtype=np.int64)
    return logits, labels


@pytest.mark.parametrize("truth", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with(truth: float) -> None:
    logits, labels = sampled(truth)
    assert fit_temperature(logits, labels) == pytest.approx(truth, rel=0.1)


def test_calibrating_lowers_the_expected_calibration_error() -> None:
    logits, labels = sampled(2.5)
    fitted = fit_temperature(logits[:2000], labels[:2000])
    before, _ = reliability(softmax(logits[2000:]), labels[2000:])
    after, bins = reliability(softmax(logits[2000:] / fitted), labels[2000:])
    assert after < before / 3
    assert sum(b["share"] for b in bins) == pytest.approx(1.0, abs=1e-3)


def test_a_dev_split_without_errors_leaves_the_scores_as_they_were() -> None:
    assert fit_temperature(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)) == 1.0
    logits, _ = sampled(1.0)
    assert fit_temperature(logits, logits.argmax(1)) == 1.0  # all right: no T to fit
    assert reliability(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)) == (0.0, [])
