"""Calibrated scores: one temperature, fitted on the dev split, kept in the model file.

A fine-tuned classifier's softmax is overconfident, so a served `score` of 0.95
does not mean right 95% of the time. Temperature scaling (Guo et al. 2017)
divides the logits by one scalar T chosen to minimise the negative
log-likelihood of the dev labels: it leaves every predicted label as it was
(argmax is unchanged, so the int8 budget and the parity check do not move) and
makes the confidence mean what it says. T is fitted on the served model's own
logits (int8 or fp32, whichever was kept) and written into model.onnx's
metadata (`core.runtime.TEMPERATURE`), where every reader of the file applies
it. The expected calibration error (ECE) on the evaluation split, before and
after, goes into metrics.json, and the reliability diagram into report.png.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from scipy.optimize import minimize_scalar

from core.profile import BINS, bins_of
from core.registry import ONNX_FILE
from core.runtime import TEMPERATURE, Classifier, softmax
from training.export import add_marks

Logits = npt.NDArray[np.float32]
# T is searched in log space between these; a T at either end means a dev split too small
# or a degenerate model, and metrics.json shows it.
T_RANGE = (0.05, 20.0)


def nll(logits: Logits, labels: npt.NDArray[np.int64], temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits: Logits, labels: npt.NDArray[np.int64]) -> float:
    """The T in T_RANGE that minimises the dev NLL; 1.0 when the dev texts hold no error.

    Without one, the NLL keeps falling as T goes to 0: the dev split says only "sharper",
    never how sharp, and fitting would make every score 1.0.
    """
    if not (logits.argmax(axis=1) != labels).any():
        return 1.0
    low, high = (math.log(t) for t in T_RANGE)
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=(low, high), method="bounded"
    )
    return float(math.exp(found.x))


def reliability(
    probabilities: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error, and per confidence bin its mean confidence, accuracy and
    share of texts (the reference profile's equal-width bins of the top probability)."""
    if len(labels) == 0:
        return 0.0, []
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = bins_of(confidence)
    ece, table = 0.0, []
    for b in range(BINS):
        inside = which == b
        if not inside.any():
            continue
        share = float(inside.mean())
        mean_conf, accuracy = float(confidence[inside].mean()), float(correct[inside].mean())
        ece += share * abs(mean_conf - accuracy)
        table.append({"confidence": round(mean_conf, 4), "accuracy": round(accuracy, 4),
                      "share": round(share, 4)})  # fmt: skip
    return round(ece, 4), table


@dataclass(frozen=True)
class Calibration:
    temperature: float
    dev_texts: int
    dev_errors: int  # none: nothing to fit on, T stays 1
    ece_before: float
    ece_after: float
    bins_before: list[dict[str, float]]
    bins_after: list[dict[str, float]]

    def record(self) -> dict[str, Any]:
        return {
            "temperature": round(self.temperature, 4), "dev_texts": self.dev_texts,
            "dev_errors": self.dev_errors,
            "ece_before": self.ece_before, "ece_after": self.ece_after,
            "reliability_before": self.bins_before, "reliability_after": self.bins_after,
        }  # fmt: skip


def calibrate(
    staging: Path, classifier: Classifier, dev: tuple[list[str], list[int]],
    eval_logits: Logits, eval_labels: list[int],
) -> Calibration:  # fmt: skip
    """Fit T on the dev texts with the kept model, measure ECE on the evaluation texts, and
    write T into staging's model.onnx (left as it is when T stays 1)."""
    dev_texts, dev_labels = dev
    dev_logits = classifier.logits(dev_texts) if dev_texts else np.zeros((0, 1), np.float32)
    dev_y = np.asarray(dev_labels, dtype=np.int64)
    temperature = fit_temperature(dev_logits, dev_y)
    errors = int((dev_logits.argmax(axis=1) != dev_y).sum())
    y = np.asarray(eval_labels, dtype=np.int64)
    ece_before, bins_before = reliability(softmax(eval_logits), y)
    ece_after, bins_after = reliability(softmax(eval_logits / temperature), y)
    if temperature != 1.0:
        path = staging / ONNX_FILE
        model = onnx.load(str(path))
        add_marks(model, {TEMPERATURE: repr(temperature)})
        onnx.save(model, str(path))
    return Calibration(temperature, len(dev_texts), errors, ece_before, ece_after, bins_before,
                       bins_after)  # fmt: skip
