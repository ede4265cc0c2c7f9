"""What the gate decides on, gathered from the plan, the versions and the store.

The candidate's predictions come from its own evaluation; the active version
and the chain's reference are scored on the same texts (each only where it
never trained on them, reusing what it scored as a candidate), and the new
labels are shown to the active model (retrain/labels.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core import registry
from core.registry import ModelVersion
from core.settings import RetrainSettings
from core.text import text_key
from retrain.gate import Evidence, Reference, version_predictions
from retrain.labels import label_noise
from retrain.plan import Plan, Row

MAX_SUSPECT_CHARS = 200


def chain_root(active: ModelVersion) -> tuple[ModelVersion | None, str | None]:
    """The version `active`'s chain of incremental retrains started from (its nearest
    ancestor that is not incremental), or None and why."""
    version, seen = active, {active.tag}
    while version.metadata.get("mode") == "incremental":
        parent = version.metadata.get("parent")
        if not parent or parent in seen:
            return None, f"{version.tag} names no parent to trace its chain to"
        try:
            version = registry.get(str(parent))
        except registry.VersionNotFoundError:
            return None, f"{parent}, an ancestor of {active.tag}, is no longer in the model store"
        seen.add(version.tag)
    if version.tag == active.tag:
        return None, f"{active.tag} is not incremental: it is its own chain's reference"
    return version, None


def gather(
    plan: Plan,
    labels: tuple[str, ...],
    candidate_predictions: Sequence[int],
    active: ModelVersion | None,
    root: tuple[ModelVersion | None, str | None, int | None],
    settings: RetrainSettings,
) -> tuple[Evidence, list[Row]]:
    """The gate's evidence over the evaluation texts the active version never trained on,
    and those rows. `root` is the chain's reference, why there is none, and its data revision.
    """
    seen = active.trained_keys() if active else None
    keep = [i for i, r in enumerate(plan.eval) if seen is None or text_key(r.text) not in seen]
    rows = [plan.eval[i] for i in keep]
    index = {name: i for i, name in enumerate(labels)}
    texts = [r.text for r in rows]
    evidence = Evidence(
        y=np.array([index[r.label] for r in rows], dtype=np.int64),
        candidate=np.array([candidate_predictions[i] for i in keep], dtype=np.int64),
        active=None,
        new=np.array([r.new for r in rows], dtype=bool),
        n_classes=len(labels),
        new_data=plan.new_examples > 0,
        refit=plan.mode == "refit",
    )
    if active is None or not rows:
        return evidence, rows
    threads = settings.retrain_threads
    evidence.active = version_predictions(active, texts, labels, threads)
    reference, why, revision = root
    evidence.reference_missing = why
    if reference is not None:
        trained = reference.trained_keys() or set()
        comparable = np.array(
            [text_key(r.text) not in trained and (revision is None or r.revision <= revision)
             for r in rows], dtype=bool,
        )  # fmt: skip
        predictions = version_predictions(reference, texts, labels, threads)
        evidence.reference = Reference(reference.tag, predictions, comparable)
    new = [r for r in (*plan.train, *plan.eval) if r.new and text_key(r.text) not in (seen or ())]
    old = [(r.text, r.label) for r in rows if not r.new]
    evidence.labels = label_noise(active, [(r.text, r.label) for r in new], old, threads)
    return evidence, new


def suspects(evidence: Evidence, new: Sequence[Row]) -> list[dict[str, object]]:
    """The rows confident learning flagged, most suspect first, as a user can look them up."""
    if evidence.labels is None:
        return []
    return [
        {"id": new[s.index].id, "text": new[s.index].text[:MAX_SUSPECT_CHARS], "label": s.label,
         "predicted": s.predicted, "confidence": s.confidence}
        for s in evidence.labels.suspects
    ]  # fmt: skip
