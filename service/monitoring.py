"""Drift signals: a worker's latest predictions against its version's reference profile.

Each worker keeps a window of its latest predictions (MONITOR_WINDOW, none
older than MONITOR_WINDOW_SECONDS; `service.metrics.PredictionWindow`, which
the model thread appends each batch's scores to in a few microseconds), and
compares it with the served version's
reference profile (`core.profile`, written at training) when the job runner
polls (every MODEL_POLL_SECONDS) and when GET /monitoring asks, never on the
predict path. Three signals, each with a test and a size, so a small window
needs a real effect and a large one does not flag a trivial one (Evidently,
Alibi Detect):

- label: the predicted-label mix, chi-squared goodness of fit (p-value) and
  Jensen-Shannon distance (base 2) from the reference's mix;
- confidence: Kolmogorov-Smirnov two-sample test against the reference's
  confidences (p-value and statistic);
- accuracy: the accuracy estimated from the live confidences, by the
  evaluation accuracy of their confidence bins (NannyML's idea; the scores are
  calibrated), against the evaluation's accuracy.

The gauges merge across workers the way an alert wants: distances and drift
flags by max, p-values, mean confidence and estimated accuracy by min. A
worker whose window is short reports the reference's own values and no drift.
A swap empties the window: the new version is judged against its own profile.

A flag is one look at one window, and a window is looked at every poll: on
traffic like the evaluation's a flag comes up now and then by chance (about
one 100-200-prediction window in 200 on the tests' tiny model). Acting on
drift (RETRAIN_ON_DRIFT) therefore takes `drift_confirmed`: drift in the
window and in the one before it, which hold different predictions.
"""

from __future__ import annotations

import importlib
import os
from typing import Literal

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import BaseModel

from core import profile
from core.profile import Profile
from service.metrics import NAMESPACE, PredictionWindow
from service.model_holder import LoadedModel
from service.settings import Settings

SCIPY = ("scipy.stats", "scipy.spatial.distance")
SIGNALS = ("label", "confidence", "accuracy")
Status = Literal["no_model", "no_profile", "collecting", "ready"]


class Thresholds(BaseModel):
    p_value: float
    label_distance: float
    confidence_statistic: float
    accuracy_drop: float


class Signals(BaseModel):
    """One worker's view: its window, the reference it compares with, and each signal."""

    status: Status
    model_version: str | None
    reference_version: str | None
    window: int
    window_seconds: float
    min_predictions: int
    predictions: int
    label_share: dict[str, float]
    reference_label_share: dict[str, float]
    label_distance: float
    label_p_value: float
    confidence_statistic: float
    confidence_p_value: float
    confidence_histogram: list[float]
    reference_confidence_histogram: list[float]
    entropy_histogram: list[float]
    reference_entropy_histogram: list[float]
    mean_confidence: float
    estimated_accuracy: float
    reference_accuracy: float
    drift: dict[str, bool]
    drift_confirmed: bool = False  # drift in this window and in the one before it, too
    thresholds: Thresholds


Merge = Literal["livemax", "livemin", "livesum"]  # across workers, as an alert wants
# Each gauge set from one field of `Signals`: (field, series, merged across workers by, help).
GAUGES: tuple[tuple[str, str, Merge, str], ...] = (
    ("label_distance", "drift_label_distance", "livemax",
     "Jensen-Shannon distance (base 2) of the predicted-label mix from the reference's."),
    ("label_p_value", "drift_label_pvalue", "livemin",
     "Chi-squared p-value of the label mix against the reference."),
    ("confidence_statistic", "drift_confidence_statistic", "livemax",
     "Kolmogorov-Smirnov statistic of live confidences against the reference's."),
    ("confidence_p_value", "drift_confidence_pvalue", "livemin",
     "Kolmogorov-Smirnov p-value of live confidences."),
    ("mean_confidence", "monitor_mean_confidence", "livemin",
     "Mean confidence over a worker's window."),
    ("estimated_accuracy", "monitor_estimated_accuracy", "livemin",
     "Accuracy estimated from the window's confidences by the evaluation's accuracy per "
     "confidence bin."),
    ("reference_accuracy", "monitor_reference_accuracy", "livemax",
     "Evaluation accuracy of the served version."),
    ("predictions", "monitor_window_predictions", "livesum",
     "Predictions in the workers' windows."),
)  # fmt: skip


class MonitorMetrics:
    """The monitoring gauges (one set per worker, merged by /metrics as each says)."""

    def __init__(self) -> None:
        self.values = {
            field: Gauge(series, doc, namespace=NAMESPACE, multiprocess_mode=merge)
            for field, series, merge, doc in GAUGES
        }
        self.drift = Gauge(
            "drift_detected", "1 while a worker's window shows drift on `signal`.", ["signal"],
            namespace=NAMESPACE, multiprocess_mode="livemax",
        )  # fmt: skip
        self.reference_share = Gauge(
            "reference_label_share",
            "Share of each label among the served version's predictions on its evaluation split.",
            ["label"], namespace=NAMESPACE, multiprocess_mode="livemostrecent",
        )  # fmt: skip

    def publish(self, signals: Signals) -> None:
        for field, gauge in self.values.items():
            gauge.set(getattr(signals, field))
        for name in SIGNALS:
            self.drift.labels(name).set(int(signals.drift[name]))

    def reference(self, new: Profile | None, old: Profile | None) -> None:
        for label in old.labels if old else ():
            self.reference_share.labels(label).set(0)
        if new is not None:
            for label, share in zip(new.labels, new.label_share(), strict=True):
                self.reference_share.labels(label).set(float(share))


class Monitor:
    """One worker's drift signals over its served version's latest predictions."""

    def __init__(self, settings: Settings, window: PredictionWindow) -> None:
        # scipy.stats is ~66 MB resident: loaded in the worker, which builds a Monitor before
        # its first request and before its other threads start, not at module import, which
        # BentoML's supervisor does only to find the service. Importing it later, in the poll
        # thread, raced BentoML's own `scipy.sparse` probe of model metadata in a request
        # thread, which then saw a half-imported module (a 500 under schemathesis).
        for module in SCIPY:
            importlib.import_module(module)
        self.settings = settings
        self.metrics = MonitorMetrics()
        self.window = window
        self._served: tuple[str, Profile | None] | None = None  # version id, its profile
        self.thresholds = Thresholds(
            p_value=settings.drift_p_value,
            label_distance=settings.drift_label_distance,
            confidence_statistic=settings.drift_confidence_statistic,
            accuracy_drop=settings.drift_accuracy_drop,
        )

    def swapped(self, new: LoadedModel, old: LoadedModel | None) -> None:
        """ModelHolder's swap callback: a new version starts an empty window and its profile."""
        previous = self._served[1] if self._served else None
        reference = profile.read(new.version.path)
        self._served = (new.version_id, reference)
        self.window.restart(new.version_id)
        self.metrics.reference(reference, previous)

    def signals(self) -> Signals:
        s = self.settings
        served = self._served
        rows = _rows(self.window.recent(s.monitor_window_seconds))
        latest, before = rows[-s.monitor_window :], rows[: -s.monitor_window]
        version, reference = served if served else (None, None)
        status: Status = (
            "no_model" if served is None
            else "no_profile" if reference is None
            else "collecting" if len(latest) < s.monitor_min_predictions
            else "ready"
        )  # fmt: skip
        common = {
            "status": status, "model_version": version,
            "reference_version": version if reference else None, "window": s.monitor_window,
            "window_seconds": s.monitor_window_seconds,
            "min_predictions": s.monitor_min_predictions, "predictions": len(latest),
            "thresholds": self.thresholds,
        }  # fmt: skip
        if reference is None:
            return Signals(**common, **_neutral(None, latest))
        values = _compare(reference, latest, status == "ready", self.thresholds)
        confirmed = _drifting(values) and _drifting(
            _compare(reference, before, len(before) >= s.monitor_min_predictions, self.thresholds)
        )
        return Signals(**common, **values, drift_confirmed=confirmed)

    def publish(self) -> Signals:
        """Compute this worker's signals and set its gauges (job-runner poll, GET /monitoring)."""
        signals = self.signals()
        self.metrics.publish(signals)
        return signals


def _rows(probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Per prediction: its label index, confidence and normalised entropy."""
    if not len(probabilities):
        return np.zeros((0, 3))
    return np.column_stack(
        [
            probabilities.argmax(axis=1),
            probabilities.max(axis=1),
            profile.normalised_entropy(probabilities),
        ]
    )


def _neutral(reference: Profile | None, rows: npt.NDArray[np.float64]) -> dict[str, object]:
    """The values of a worker with nothing to compare yet: the reference's own, no drift."""
    confidences = rows[:, 1]
    labels = reference.labels if reference else []
    share = reference.label_share().tolist() if reference else []
    sample = np.asarray(reference.confidence_sample) if reference else np.zeros(0)
    mean_reference = float(sample.mean()) if len(sample) else 1.0
    return {
        "label_share": _live_share(labels, rows),
        "reference_label_share": dict(zip(labels, share, strict=True)),
        "label_distance": 0.0, "label_p_value": 1.0,
        "confidence_statistic": 0.0, "confidence_p_value": 1.0,
        "confidence_histogram": profile.histogram(confidences),
        "reference_confidence_histogram": reference.confidence_histogram if reference else [],
        "entropy_histogram": profile.histogram(rows[:, 2]),
        "reference_entropy_histogram": reference.entropy_histogram if reference else [],
        "mean_confidence": mean_reference,
        "estimated_accuracy": reference.accuracy if reference else 1.0,
        "reference_accuracy": reference.accuracy if reference else 1.0,
        "drift": dict.fromkeys(SIGNALS, False),
    }  # fmt: skip


def _compare(
    reference: Profile, rows: npt.NDArray[np.float64], ready: bool, limits: Thresholds
) -> dict[str, object]:
    values = _neutral(reference, rows)
    if not ready:
        return values
    from scipy.spatial.distance import jensenshannon  # loaded by Monitor()
    from scipy.stats import chisquare, ks_2samp

    labels = rows[:, 0].astype(np.intp)
    confidences = rows[:, 1]
    observed = np.bincount(labels, minlength=len(reference.labels)).astype(np.float64)
    expected = reference.label_share() * len(labels)
    label_p = float(chisquare(observed, expected).pvalue)
    distance = float(jensenshannon(observed / observed.sum(), reference.label_share(), base=2))
    ks = ks_2samp(confidences, np.asarray(reference.confidence_sample))
    statistic, confidence_p = float(ks.statistic), float(ks.pvalue)
    estimated = reference.estimated_accuracy(confidences)
    drift = {
        "label": label_p < limits.p_value and distance >= limits.label_distance,
        "confidence": confidence_p < limits.p_value and statistic >= limits.confidence_statistic,
        "accuracy": estimated <= reference.accuracy - limits.accuracy_drop,
    }
    return values | {
        "label_distance": distance, "label_p_value": label_p,
        "confidence_statistic": statistic, "confidence_p_value": confidence_p,
        "mean_confidence": float(confidences.mean()), "estimated_accuracy": estimated,
        "drift": drift,
    }  # fmt: skip


def _drifting(values: dict[str, object]) -> bool:
    drift = values["drift"]
    assert isinstance(drift, dict)
    return any(drift.values())


def _live_share(labels: list[str], rows: npt.NDArray[np.float64]) -> dict[str, float]:
    counts = np.bincount(rows[:, 0].astype(np.intp), minlength=len(labels))[: len(labels)]
    total = max(int(counts.sum()), 1)
    return {label: round(int(c) / total, 6) for label, c in zip(labels, counts, strict=True)}


Merged = dict[str, float | dict[str, float]]


def merged_gauges() -> Merged:
    """The monitoring gauges as /metrics shows them, merged across this server's workers
    (BentoML runs every worker with PROMETHEUS_MULTIPROC_DIR; without it, nothing)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return {}
    merged: Merged = {}
    for family in MultiProcessCollector(CollectorRegistry(), directory).collect():
        if not family.name.startswith((f"{NAMESPACE}_drift", f"{NAMESPACE}_monitor")):
            continue
        for sample in family.samples:
            name = sample.name.removeprefix(f"{NAMESPACE}_")
            if "signal" in sample.labels:
                by_signal = merged.setdefault(name, {})
                assert isinstance(by_signal, dict)
                by_signal[sample.labels["signal"]] = sample.value
            else:
                merged[name] = sample.value
    return merged
