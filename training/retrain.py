"""`python -m training retrain --job-id ID`: one retrain job, start to decision.

Runs in its own process (started by a serving worker, or as a Kubernetes Job
pod), never inside the service: it reads every stored example, fine-tunes a
candidate with the stable hash split (so no version ever trains on an
evaluation text), scores the candidate and the active model on the same
evaluation snapshot, and promotes the candidate only if it is not worse
(shared/DESIGN.md #7). The decision and the promotion are one transaction,
and happen only while the job is still ours: a job that was declared dead
meanwhile cannot promote anything.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path
from typing import Any

from service import registry
from service.runtime import Classifier
from service.settings import Settings
from service.store import Job, Store
from training import data as datamod
from training.config import TrainConfig, default_base_model
from training.evaluate import classification_metrics
from training.pipeline import run_fit

log = logging.getLogger(__name__)

# Training is 95% of a job's progress; the gate and promotion are the rest.
TRAIN_SHARE = 0.95


def write_snapshot(store: Store, path: Path) -> int:
    """Every stored example as a CSV: the immutable input of this run."""
    examples = store.all_examples()
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((e.text, e.label) for e in examples)
    return len(examples)


def score_active(
    active: registry.ModelVersion, eval_data: datamod.LabeledData, threads: int
) -> dict[str, Any]:
    """The active model's metrics on the candidate's evaluation snapshot.

    Scored in the candidate's label space: a label the active model does not
    know (one just added) counts as a miss for it, which is what it is.
    """
    classifier = Classifier(active.path, active.max_length, threads)
    index = {name: i for i, name in enumerate(eval_data.label_names)}
    predictions: list[int] = []
    for start in range(0, len(eval_data), 64):
        probs = classifier.predict_proba(eval_data.texts[start : start + 64])
        predictions.extend(index.get(active.labels[int(i)], -1) for i in probs.argmax(axis=1))
    return classification_metrics(eval_data.labels, predictions, eval_data.label_names)


def gate(candidate_f1: float, active_f1: float | None, tolerance: float) -> tuple[bool, str]:
    """Promote unless the candidate's macro-F1 is below the active's by more than `tolerance`."""
    if active_f1 is None:
        return True, f"promoted: no active model; candidate macro-F1 {candidate_f1:.4f}"
    if candidate_f1 >= active_f1 - tolerance:
        return True, (
            f"promoted: candidate macro-F1 {candidate_f1:.4f} >= active {active_f1:.4f}"
            f" - tolerance {tolerance:g}"
        )
    return False, (
        f"rejected: candidate macro-F1 {candidate_f1:.4f} < active {active_f1:.4f}"
        f" - tolerance {tolerance:g}; the active version stays"
    )


# Fields of the active version's recipe that describe its run, not how to train.
NOT_INHERITED = ("data", "eval_data", "name", "split", "parent", "threads", "base_model")


def build_config(
    job: Job, data: Path, active: registry.ModelVersion | None, settings: Settings
) -> TrainConfig:
    """The active version's training recipe, the request's overrides on top, the hash split always.

    Retraining reruns the fine-tuning that made the model being served, from the
    same base model, on all stored data; a request may change the strategy,
    epochs, learning rate or batch size.
    """
    recipe: dict[str, Any] = dict(active.metadata.get("config", {})) if active else {}
    for key in NOT_INHERITED:
        recipe.pop(key, None)
    base_model = active.metadata.get("base_model") if active else None
    return TrainConfig(
        **recipe
        | job.params.get("training", {})
        | {
            "data": data,
            "name": job.model_name,
            "base_model": base_model or default_base_model(),
            "split": "hash",
            "parent": active.tag if active else None,
            "threads": settings.retrain_threads,
        }
    )


def run_job(job_id: str, store: Store, settings: Settings) -> str:
    """Run one claimed job to its final state; returns that state."""
    job = store.get_job(job_id)
    if job is None or job.state != "running":
        raise LookupError(f"job {job_id} is not running (state: {job and job.state})")
    active_tag = store.active_tag(job.model_name)
    active = registry.get(active_tag) if active_tag else None
    try:
        with (
            store.heartbeats(job_id),
            tempfile.TemporaryDirectory(prefix="selftune-retrain-") as tmp,
        ):
            data = Path(tmp) / "examples.csv"
            count = write_snapshot(store, data)
            store.report_progress(job_id, 0.0, f"training on {count} stored examples")
            cfg = build_config(job, data, active, settings)

            def progress(step: int, total: int, dev_f1: float) -> None:
                store.report_progress(
                    job_id,
                    TRAIN_SHARE * step / total,
                    f"step {step}/{total}, dev macro-F1 {dev_f1:.4f}",
                )

            candidate = run_fit(cfg, progress)
            store.set_candidate(job_id, candidate.tag)
            store.set_version_status(job.model_name, candidate.tag, "candidate", f"job {job_id}")
            candidate_metrics = candidate.metrics()["evaluation"]
            active_metrics = None
            if active is not None:
                snapshot = datamod.load(data)
                _, eval_data = datamod.hash_split(snapshot, cfg.eval_fraction)
                active_metrics = score_active(active, eval_data, cfg.cpu_threads)
    except datamod.DataError as exc:
        store.finish_job(job_id, "failed", error=f"the stored examples cannot be trained on: {exc}")
        return "failed"
    promote, decision = gate(
        candidate_metrics["macro_f1"],
        active_metrics["macro_f1"] if active_metrics else None,
        settings.gate_tolerance,
    )
    metrics = {"candidate": candidate_metrics, "active": active_metrics}
    state = "succeeded" if promote else "rejected"
    with store.session() as session:
        if not store.finish_job(job_id, state, decision=decision, metrics=metrics, session=session):
            log.warning("job=%s was no longer running (declared dead); not promoting", job_id)
            return "failed"
        if promote:
            store.activate(job.model_name, candidate.tag, f"job {job_id}: {decision}", session)
    if not promote:
        store.set_version_status(job.model_name, candidate.tag, "rejected", decision)
    log.info("job=%s version=%s %s", job_id, candidate.tag, decision)
    return state
