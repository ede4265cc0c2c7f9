"""The quality gate: may the candidate replace the active version?

Both are scored on the same evaluation texts (the hash split's, minus any the
active version trained on). The candidate must not be worse than the active
by more than GATE_TOLERANCE in macro-F1 on all of them, nor on the *old*
slice alone (texts that were there before the new data), so forgetting
cannot hide behind a better total. A paired bootstrap interval of the
difference goes into the decision record. Too few texts to judge: rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from core.registry import ModelVersion
from core.runtime import Classifier, Wide
from core.settings import RetrainSettings
from core.text import text_key

BOOTSTRAP_RESAMPLES = 1000
Ints = npt.NDArray[np.int64]


def macro_f1(y_true: Ints, y_pred: Ints, n_classes: int) -> float:
    """Macro-F1 over `n_classes` labels (a prediction of -1 is always wrong)."""
    f1 = []
    for c in range(n_classes):
        tp = int(np.sum((y_pred == c) & (y_true == c)))
        fp = int(np.sum((y_pred == c) & (y_true != c)))
        fn = int(np.sum((y_pred != c) & (y_true == c)))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1))


def paired_interval(
    y: Ints, cand: Ints, act: Ints, n_classes: int, seed: int = 0
) -> tuple[float, float]:
    """95% interval of macro-F1(candidate) - macro-F1(active), resampling texts in pairs."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        idx = rng.integers(0, len(y), len(y))
        diffs.append(macro_f1(y[idx], cand[idx], n_classes) - macro_f1(y[idx], act[idx], n_classes))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def active_predictions(
    active: ModelVersion, texts: Sequence[str], labels: Sequence[str], threads: int,
    wide: Wide | None = None,
) -> Ints:  # fmt: skip
    """The active version's labels as indices into `labels` (-1: a label it does not have).

    Texts it was already evaluated on (as a candidate) are not scored again.
    """
    index = {name: i for i, name in enumerate(labels)}
    known = active.eval_predictions()
    keys = [text_key(t) for t in texts]
    missing = [t for t, k in zip(texts, keys, strict=True) if k not in known]
    if missing:
        classifier = Classifier(active.path, active.max_length, threads, wide=wide)
        scored = classifier.predict_indices(missing)
        known |= dict(zip((text_key(t) for t in missing), scored, strict=True))
    return np.array([index.get(active.labels[known[k]], -1) for k in keys], dtype=np.int64)


@dataclass(frozen=True)
class Decision:
    promote: bool
    message: str
    record: dict[str, Any]


def _slice(y: Ints, cand: Ints, act: Ints | None, n: int, mask: npt.NDArray[np.bool_]) -> Any:
    if not mask.any():
        return {"texts": 0}
    return {
        "texts": int(mask.sum()),
        "candidate_macro_f1": macro_f1(y[mask], cand[mask], n),
        "active_macro_f1": None if act is None else macro_f1(y[mask], act[mask], n),
    }


def decide(
    y: Ints,
    cand: Ints,
    act: Ints | None,
    new: npt.NDArray[np.bool_],
    n_classes: int,
    settings: RetrainSettings,
) -> Decision:
    """The gate's verdict on predictions over the same texts (`new` marks the new slice)."""
    tol = settings.gate_tolerance
    total = _slice(y, cand, act, n_classes, np.ones(len(y), dtype=bool))
    record: dict[str, Any] = {
        "tolerance": tol,
        "min_eval": settings.gate_min_eval,
        "all": total,
        "new": _slice(y, cand, act, n_classes, new),
        "old": _slice(y, cand, act, n_classes, ~new),
    }
    if act is None:
        f1 = total.get("candidate_macro_f1", 0.0)
        return Decision(True, f"promoted: no active model; candidate macro-F1 {f1:.4f}", record)
    if len(y) < settings.gate_min_eval:
        return Decision(
            False,
            f"rejected: only {len(y)} evaluation texts (GATE_MIN_EVAL {settings.gate_min_eval}) "
            "is too few to compare models; add labeled examples",
            record,
        )
    low, high = paired_interval(y, cand, act, n_classes)
    record["difference_95ci"] = [low, high]
    c, a = total["candidate_macro_f1"], total["active_macro_f1"]
    if c < a - tol:
        return Decision(
            False,
            f"rejected: candidate macro-F1 {c:.4f} < active {a:.4f} - tolerance {tol:g}; "
            "the active version stays",
            record,
        )
    old = record["old"]
    if old["texts"] >= settings.gate_min_eval:
        co, ao = old["candidate_macro_f1"], old["active_macro_f1"]
        if co < ao - tol:
            return Decision(
                False,
                f"rejected: on the old slice ({old['texts']} texts) candidate macro-F1 "
                f"{co:.4f} < active {ao:.4f} - tolerance {tol:g} (it forgot), although "
                f"the total is {c:.4f} vs {a:.4f}; the active version stays",
                record,
            )
    return Decision(
        True,
        f"promoted: candidate macro-F1 {c:.4f} >= active {a:.4f} - tolerance {tol:g} "
        f"(difference 95% CI {low:+.4f}..{high:+.4f})",
        record,
    )
