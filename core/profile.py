"""A version's reference profile: what its predictions look like on data it never trained on.

Training writes it (`profile.json` in the version folder) from the served
model's calibrated probabilities on the evaluation split; serving
(`service.monitoring`) compares each worker's recent predictions against it.
What it keeps is what a drift check needs without the evaluation texts: the
predicted-label counts, confidence and entropy histograms, the evaluation
accuracy in each confidence bin (so accuracy can be estimated from live
confidences, as NannyML does), and a sample of the confidences for a
two-sample test.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

PROFILE_FILE = "profile.json"
BINS = 10  # equal-width bins over [0, 1], for confidence and normalised entropy
# Confidences kept for the two-sample test: every one up to this many, else as many
# evenly spaced quantiles (the test's power is set by the smaller live window anyway).
SAMPLE_SIZE = 1000
# A confidence bin's evaluation accuracy is trusted as much as this many texts' calibrated
# confidences: with 36 evaluation texts a bin may hold one, and one miss is not 0% accuracy.
PRIOR_TEXTS = 10

Probabilities = npt.NDArray[np.floating]


class Profile(BaseModel):
    """A version's predictions on its evaluation split, summarised."""

    model_config = ConfigDict(frozen=True)
    labels: list[str]
    texts: int
    label_counts: list[int]  # predicted, in `labels` order
    accuracy: float
    confidence_histogram: list[float]  # share of texts per bin
    entropy_histogram: list[float]
    accuracy_by_confidence: list[float | None]  # None: no evaluation text in that bin
    confidence_sample: list[float]  # sorted

    def label_share(self) -> npt.NDArray[np.float64]:
        """Predicted-label shares, smoothed (+0.5 per label) so no label has share 0."""
        counts = np.asarray(self.label_counts, dtype=np.float64) + 0.5
        return counts / counts.sum()

    def estimated_accuracy(self, confidences: npt.NDArray[np.floating]) -> float:
        """The evaluation's accuracy, moved by how much better or worse the evaluation did
        in these confidences' bins than over its own confidences. Equals the evaluation's
        accuracy on traffic like the evaluation's, however small the evaluation was."""
        if len(confidences) == 0:
            return float("nan")
        shift = float(self._bin_accuracy(np.asarray(confidences)).mean()) - self._own_estimate
        return float(np.clip(self.accuracy + shift, 0.0, 1.0))

    @cached_property
    def _own_estimate(self) -> float:
        """What `_bin_accuracy` says of the evaluation's own confidences (once per version)."""
        return float(self._bin_accuracy(np.asarray(self.confidence_sample)).mean())

    def _bin_accuracy(self, confidences: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Per confidence: the evaluation's accuracy in its bin, shrunk toward the (calibrated)
        confidence itself as if PRIOR_TEXTS more texts were scored at it, so a bin of one
        wrong text reads as a little worse than the confidence, not as 0% (an empty bin
        reads as the confidence)."""
        c = np.asarray(confidences, dtype=np.float64)
        which = bins_of(c)
        texts = np.rint(np.asarray(self.confidence_histogram) * self.texts)[which]
        right = np.array([a or 0.0 for a in self.accuracy_by_confidence])[which] * texts
        return np.asarray((right + PRIOR_TEXTS * c) / (texts + PRIOR_TEXTS))


def bins_of(values: npt.NDArray[np.floating]) -> npt.NDArray[np.intp]:
    """The BINS-bin index of each value in [0, 1] (1.0 falls in the last bin)."""
    return np.clip((np.asarray(values) * BINS).astype(np.intp), 0, BINS - 1)


def histogram(values: npt.NDArray[np.floating]) -> list[float]:
    """Share of `values` in each of the BINS bins."""
    if len(values) == 0:
        return [0.0] * BINS
    counts = np.bincount(bins_of(values), minlength=BINS)
    return [round(float(c), 6) for c in counts / len(values)]


def normalised_entropy(probabilities: Probabilities) -> npt.NDArray[np.float64]:
    """Entropy of each row divided by log(labels): 0 is certain, 1 is uniform."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    return np.asarray(-(p * np.log(p)).sum(axis=1) / np.log(p.shape[1]))


def build(probabilities: Probabilities, true: Sequence[int], labels: Sequence[str]) -> Profile:
    """The profile of calibrated `probabilities` (texts x labels) with their true labels."""
    p = np.asarray(probabilities, dtype=np.float64)
    predicted = p.argmax(axis=1)
    confidence = p.max(axis=1)
    correct = predicted == np.asarray(true)
    which = bins_of(confidence)
    by_bin = [
        round(float(correct[which == b].mean()), 6) if (which == b).any() else None
        for b in range(BINS)
    ]
    ordered = np.sort(confidence)
    if len(ordered) > SAMPLE_SIZE:
        ordered = np.quantile(ordered, np.linspace(0.0, 1.0, SAMPLE_SIZE))
    return Profile(
        labels=list(labels),
        texts=len(p),
        label_counts=np.bincount(predicted, minlength=len(labels)).tolist(),
        accuracy=round(float(correct.mean()), 6) if len(p) else 0.0,
        confidence_histogram=histogram(confidence),
        entropy_histogram=histogram(normalised_entropy(p)),
        accuracy_by_confidence=by_bin,
        confidence_sample=[round(float(c), 6) for c in ordered],
    )


def write(folder: Path, profile: Profile) -> None:
    (folder / PROFILE_FILE).write_text(json.dumps(profile.model_dump(), indent=1))


def read(folder: Path) -> Profile | None:
    """The version's profile; None for a version trained before profiles existed."""
    path = folder / PROFILE_FILE
    return Profile.model_validate_json(path.read_text()) if path.exists() else None
