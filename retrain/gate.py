"""The quality gate: may the candidate replace the active version?

It decides on evidence, not on which of two noisy numbers is larger. Both
models are scored on the same evaluation texts (the hash split's, minus any
the active version trained on), and a paired bootstrap gives a one-sided
GATE_CONFIDENCE bound of macro-F1(candidate) - macro-F1(active). Promote when
every condition holds:

1. the labels are plausible: the active model's support for the new labels
   (retrain/labels.py) is not below zero, and where it cannot tell (its bounds
   straddle zero), the candidate learned them (the new slice's lower bound is
   above zero);
2. non-inferior overall and on the old slice (texts there before the new
   data): the lower bound is above -GATE_MARGIN (-GATE_REFIT_MARGIN for a
   refit, which differs from the active version by its seed too);
3. not worse on the new slice, when it holds GATE_MIN_NEW texts: its upper
   bound is not below zero (the record says when there are too few to judge);
4. the chain stays bounded: the same non-inferiority against the reference
   version (the refit or fit that the active version's incremental chain
   started from), on the texts it knew, so many small steps cannot add up;
5. with no new data since the active version, the candidate must be better
   (lower bound above zero), so retraining on the same data cannot flap.

The margin and the thresholds are measured, not tuned to a topic (bench/RETRAIN.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from core.registry import ModelVersion
from core.runtime import Classifier
from core.settings import RetrainSettings
from core.text import text_key
from retrain.labels import LabelNoise

BOOTSTRAP_RESAMPLES = 1000
Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


def _f1(confusion: npt.NDArray[np.int64], n_classes: int) -> npt.NDArray[np.float64]:
    """Macro-F1 of (..., true, predicted) confusion counts; the last predicted column is
    "a label the model does not have", always wrong."""
    tp = np.diagonal(confusion[..., :n_classes, :n_classes], axis1=-2, axis2=-1)
    fp = confusion[..., :, :n_classes].sum(axis=-2) - tp
    fn = confusion[..., :n_classes, :].sum(axis=-1) - tp
    denominator = 2 * tp + fp + fn
    f1 = np.where(tp > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    return np.asarray(f1.mean(axis=-1), dtype=np.float64)


def _confusions(y: Ints, pred: Ints, n_classes: int, rows: Ints) -> npt.NDArray[np.int64]:
    """Confusion counts per resample: `rows` is (resamples, n) indices into y and pred."""
    width = n_classes + 1
    cells = y[rows] * width + np.where(pred[rows] < 0, n_classes, pred[rows])
    offsets = np.arange(rows.shape[0])[:, None] * width * width
    counts = np.bincount((cells + offsets).ravel(), minlength=rows.shape[0] * width * width)
    return counts.reshape(rows.shape[0], width, width)[:, :n_classes, :]


def macro_f1(y: Ints, pred: Ints, n_classes: int) -> float:
    """Macro-F1 over `n_classes` labels (a prediction of -1 is always wrong)."""
    rows = np.arange(len(y))[None, :]
    return float(_f1(_confusions(y, pred, n_classes, rows), n_classes)[0])


@dataclass(frozen=True)
class Comparison:
    """Macro-F1 of the candidate and another version on one slice, and the paired bounds."""

    texts: int
    candidate: float
    other: float
    low: float  # one-sided lower bound of candidate - other
    high: float  # one-sided upper bound

    @property
    def difference(self) -> float:
        return self.candidate - self.other

    def record(self, other: str) -> dict[str, Any]:
        return {
            "texts": self.texts,
            "candidate_macro_f1": round(self.candidate, 4),
            f"{other}_macro_f1": round(self.other, 4),
            "difference": round(self.difference, 4),
            "lower_bound": round(self.low, 4),
            "upper_bound": round(self.high, 4),
        }


def compare(
    y: Ints, cand: Ints, other: Ints, n_classes: int, confidence: float, seed: int = 0
) -> Comparison:
    """The paired bootstrap of macro-F1(cand) - macro-F1(other), resampling texts together."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(y), (BOOTSTRAP_RESAMPLES, len(y)))
    diffs = _f1(_confusions(y, cand, n_classes, rows), n_classes) - _f1(
        _confusions(y, other, n_classes, rows), n_classes
    )
    low, high = np.quantile(diffs, [1 - confidence, confidence])
    return Comparison(
        len(y), macro_f1(y, cand, n_classes), macro_f1(y, other, n_classes), float(low),
        float(high),
    )  # fmt: skip


def version_predictions(
    version: ModelVersion, texts: Sequence[str], labels: Sequence[str], threads: int
) -> Ints:
    """`version`'s labels as indices into `labels` (-1: a label it does not have).

    Texts it was already evaluated on (as a candidate) are not scored again.
    """
    index = {name: i for i, name in enumerate(labels)}
    known = version.eval_predictions()
    keys = [text_key(t) for t in texts]
    missing = [t for t, k in zip(texts, keys, strict=True) if k not in known]
    if missing:
        classifier = Classifier(version.path, version.max_length, threads)
        scored = classifier.predict_indices(missing)
        known |= dict(zip((text_key(t) for t in missing), scored, strict=True))
    return np.array([index.get(version.labels[known[k]], -1) for k in keys], dtype=np.int64)


@dataclass(frozen=True)
class Reference:
    """The version the active version's incremental chain started from, on the texts it knew."""

    tag: str
    predictions: Ints  # over the gate's texts
    comparable: Mask  # texts it never trained on and that were there at its data revision


@dataclass
class Evidence:
    """Everything the gate decides on: predictions over the same texts, and the new labels."""

    y: Ints
    candidate: Ints
    active: Ints | None
    new: Mask  # the new slice: texts added or relabeled since the active version
    n_classes: int
    new_data: bool  # anything added or relabeled since the active version, in any split
    refit: bool = False  # trained afresh, not warm-started from the active version
    reference: Reference | None = None
    reference_missing: str | None = None  # why no reference bounds the chain
    labels: LabelNoise | None = None


@dataclass
class Condition:
    name: str
    passed: bool | None  # None: not judged (too few texts, nothing to compare with)
    detail: str
    advice: str = ""

    def record(self) -> dict[str, Any]:
        verdict = {True: "passed", False: "failed", None: "not judged"}[self.passed]
        return {"condition": self.name, "verdict": verdict, "detail": self.detail}


@dataclass(frozen=True)
class Decision:
    promote: bool
    message: str
    record: dict[str, Any] = field(default_factory=dict)


def _pt(value: float) -> str:
    return f"{100 * value:+.2f} pt"


def _labels(ev: Evidence, s: RetrainSettings, new: Comparison | None) -> Condition:
    """Do the new labels contradict the active model, or, where it cannot tell, did the
    candidate learn them (retrain/labels.py)?"""
    name, noise = "plausible labels", ev.labels
    if noise is None or noise.new.rows < s.gate_min_new:
        rows = 0 if noise is None else noise.new.rows
        return Condition(name, None, f"{rows} new labels the active model can judge (fewer "
                         f"than GATE_MIN_NEW {s.gate_min_new})")  # fmt: skip
    z = NormalDist().inv_cdf(s.gate_confidence)
    low, high = noise.new.mean - z * noise.new.stderr, noise.new.mean + z * noise.new.stderr
    detail = (
        f"the active model's support for the {noise.new.rows} new labels is "
        f"{noise.new.mean:+.3f} (bounds {low:+.3f}..{high:+.3f}; labels it knows are right: "
        f"{noise.reference.mean:+.3f}; a model that knows nothing: 0)"
    )
    check = (
        "check the suspect rows listed in the record (gate.labels.suspects), fix them with "
        "PATCH /examples/{id} or remove the batch with DELETE /examples?source=..., then retrain"
    )
    if high < 0:
        return Condition(name, False, f"{detail}: they contradict what it knows",
                         f"the new labels look wrong: {check}")  # fmt: skip
    if low > 0:
        return Condition(name, True, detail)
    if new is not None and new.low > 0:
        return Condition(name, True, f"{detail}; the candidate learned them: on the new slice "
                         f"its lower bound is {_pt(new.low)}")  # fmt: skip
    return Condition(name, False, (
        f"{detail}, and the new evaluation texts do not show the candidate learned them"
    ), (
        "the active model can neither confirm nor contradict the new labels: label more "
        f"examples of this kind (a tenth is held out to judge them), or {check}"
    ))  # fmt: skip


def _non_inferior(name: str, c: Comparison | None, margin: float, advice: str) -> Condition:
    if c is None:
        return Condition(name, None, "too few texts to judge")
    detail = (
        f"macro-F1 {c.candidate:.4f} vs {c.other:.4f} on {c.texts} texts, difference "
        f"{_pt(c.difference)}, lower bound {_pt(c.low)} (margin -{100 * margin:.2f} pt)"
    )
    return Condition(name, c.low > -margin, detail, advice)


def _slice(ev: Evidence, mask: Mask, other: Ints, s: RetrainSettings) -> Comparison | None:
    if int(mask.sum()) == 0:
        return None
    return compare(ev.y[mask], ev.candidate[mask], other[mask], ev.n_classes, s.gate_confidence)


def decide(ev: Evidence, s: RetrainSettings) -> Decision:
    """The gate's verdict, each condition stated with its numbers (see the module docstring)."""
    margin = max(s.gate_margin, s.gate_refit_margin) if ev.refit else s.gate_margin
    record: dict[str, Any] = {
        "margin": margin, "confidence": s.gate_confidence, "min_eval": s.gate_min_eval,
        "min_new": s.gate_min_new,
    }  # fmt: skip
    if ev.labels is not None:
        record["labels"] = ev.labels.summary()
    if ev.active is None:
        f1 = macro_f1(ev.y, ev.candidate, ev.n_classes) if len(ev.y) else 0.0
        record["all"] = {"texts": len(ev.y), "candidate_macro_f1": round(f1, 4)}
        return Decision(True, f"promoted: no active model; candidate macro-F1 {f1:.4f}", record)
    if len(ev.y) < s.gate_min_eval:
        return Decision(False, (
            f"rejected: only {len(ev.y)} evaluation texts (GATE_MIN_EVAL {s.gate_min_eval}) "
            "is too few to compare models; add labeled examples"
        ), record)  # fmt: skip
    everything = np.ones(len(ev.y), dtype=bool)
    total = _slice(ev, everything, ev.active, s)
    old = _slice(ev, ~ev.new, ev.active, s) if (~ev.new).sum() >= s.gate_min_eval else None
    new = _slice(ev, ev.new, ev.active, s) if ev.new.sum() >= s.gate_min_new else None
    assert total is not None
    record["all"] = total.record("active")
    record["old"] = old.record("active") if old else {"texts": int((~ev.new).sum())}
    record["new"] = new.record("active") if new else {"texts": int(ev.new.sum())}
    forgot = "the candidate forgot what the active version knew: a refit (mode refit) " \
             "or fewer epochs may keep it; more new labels will not"  # fmt: skip
    conditions = [
        _labels(ev, s, new),
        _non_inferior("non-inferior overall", total, margin, forgot),
        _non_inferior("non-inferior on the old slice", old, margin, forgot),
    ]
    if new is None:
        conditions.append(Condition("not worse on the new slice", None, (
            f"{int(ev.new.sum())} new evaluation texts, fewer than GATE_MIN_NEW "
            f"{s.gate_min_new}: too few to judge (a tenth of new labels is held out)"
        )))  # fmt: skip
    else:
        conditions.append(Condition(
            "not worse on the new slice", new.high >= 0,
            f"macro-F1 {new.candidate:.4f} vs {new.other:.4f} on {new.texts} texts, upper "
            f"bound {_pt(new.high)}",
            "the candidate did not learn the new labels: more labels of that kind, or check them",
        ))  # fmt: skip
    conditions.append(_chain(ev, s, margin, record))
    if not ev.new_data:
        conditions.append(Condition(
            "better, with no new data", total.low > 0,
            f"nothing was added or relabeled since the active version; lower bound "
            f"{_pt(total.low)} must be above 0",
            "retraining on the same data cannot replace a model with an equal one: add or "
            "correct labels first",
        ))  # fmt: skip
    record["conditions"] = [c.record() for c in conditions]
    failed = [c for c in conditions if c.passed is False]
    if failed:
        record["advice"] = [c.advice for c in failed if c.advice]
        why = "; ".join(f"{c.name} failed ({c.detail})" for c in failed)
        return Decision(
            False, f"rejected: {why}; the active version stays. {failed[0].advice}", record
        )
    return Decision(True, (
        f"promoted: macro-F1 {total.candidate:.4f} vs active {total.other:.4f} "
        f"(difference {_pt(total.difference)}, lower bound {_pt(total.low)}); "
        f"{sum(c.passed is True for c in conditions)} conditions passed, "
        f"{sum(c.passed is None for c in conditions)} not judged"
    ), record)  # fmt: skip


def _chain(ev: Evidence, s: RetrainSettings, margin: float, record: dict[str, Any]) -> Condition:
    ref = ev.reference
    name = "chain bounded by its reference"
    if ref is None:
        record["reference"] = {"version": None, "reason": ev.reference_missing}
        return Condition(name, None, ev.reference_missing or "no reference version")
    mask = ref.comparable
    c = _slice(ev, mask, ref.predictions, s) if mask.sum() >= s.gate_min_eval else None
    record["reference"] = {"version": ref.tag} | (
        c.record("reference") if c else {"texts": int(mask.sum())}
    )
    condition = _non_inferior(name, c, margin, (
        f"small steps added up: the candidate is worse than {ref.tag}, where this chain of "
        "incremental versions started; a refit (mode refit) starts a new chain"
    ))  # fmt: skip
    condition.detail = f"against {ref.tag}: {condition.detail}"
    return condition
