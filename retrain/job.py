"""One retrain job, start to decision: snapshot → plan → fit → gate → promote.

Runs in its own process (`python -m retrain run --job-id ID`, started by a
serving worker or as a Kubernetes Job pod), never inside the service. The
decision and the promotion are one transaction, and happen only while the job
is still ours and the active version is still the one the candidate was
compared with (compare-and-swap): a rollback made meanwhile wins.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from core import registry
from core.settings import RetrainSettings
from retrain.evidence import chain_root, gather, suspects
from retrain.gate import Decision, decide
from retrain.plan import Plan, PlanError, make_plan
from store import Store, examples, jobs, versions
from store.jobs import Job, JobState
from store.versions import ActiveChangedError, VersionStatus
from training import data as datamod
from training.config import TrainConfig, default_base_model
from training.evaluate import classification_metrics
from training.pipeline import Fitted, run_fit

log = logging.getLogger(__name__)

# The fit is this share of a job's progress; the gate and promotion are the rest.
FIT_SHARE = 0.95
REPORT_EVERY_S = 1.0
DEFAULT_SEED = 42  # TrainConfig's: a job without one replays and trains the same way each time
# What describes the active version's own run rather than how to train: not inherited.
NOT_INHERITED = (
    "data", "eval_data", "dev_data", "init_from", "name", "split", "parent", "threads",
    "base_model", "epochs", "text_column", "label_column", "average",
)  # fmt: skip


class Reporter:
    """Progress into the job record, at most once a second (each write is a transaction).

    A progress line lost to a database blip is logged, not fatal: the training goes
    on, and the next write carries the newer progress. A write with fields (the mode,
    the summary, the candidate) must land, so its error ends the job with the reason.
    """

    def __init__(self, store: Store, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        self._last = 0.0
        self.phases: dict[str, float] = {}
        self._phase_start = time.monotonic()

    def __call__(self, fraction: float, message: str, force: bool = False, **fields: Any) -> None:
        now = time.monotonic()
        if force or fields or now - self._last >= REPORT_EVERY_S:
            self._last = now
            try:
                with self.store.transaction() as tx:
                    jobs.report(tx, self.job_id, min(fraction, 1.0), message, **fields)
            except SQLAlchemyError:
                if fields:
                    raise
                log.warning("job=%s progress not written (%s); training goes on", self.job_id,
                            message, exc_info=True)  # fmt: skip

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.phases[phase] = round(now - self._phase_start, 2)
        self._phase_start = now


def build_config(
    job: Job, plan: Plan, files: dict[str, Path], active: registry.ModelVersion | None,
    settings: RetrainSettings,
) -> TrainConfig:  # fmt: skip
    """The active version's training recipe, the request's overrides on top, this plan's data."""
    recipe: dict[str, Any] = dict(active.metadata.get("config", {})) if active else {}
    for key in NOT_INHERITED:
        recipe.pop(key, None)
    incremental = plan.mode == "incremental"
    base_model = active.metadata.get("base_model") if active else None
    run = {
        "data": files["train"],
        "eval_data": files["eval"],
        "dev_data": files.get("dev"),
        "name": job.model_name,
        "base_model": base_model or default_base_model(),
        "init_from": str(active.path) if incremental and active else None,
        "epochs": settings.incremental_epochs if incremental else settings.refit_epochs,
        "parent": active.tag if active else None,
        "threads": settings.retrain_threads,
        "class_counts": plan.class_counts,
    }
    if incremental:
        run["evals_per_epoch"] = 1  # only to keep the best epoch: evaluations cost steps
        run["average"] = settings.incremental_average
    asked = job.params.get("training", {})
    cfg = TrainConfig(**recipe | run | asked)
    if incremental and "epochs" not in asked:  # a few new labels still get enough steps
        floor = settings.incremental_min_steps * cfg.batch_size / max(1, len(plan.train))
        cfg = cfg.model_copy(update={"epochs": max(cfg.epochs, floor)})
    return cfg


def write_plan(folder: Path, plan: Plan) -> dict[str, Path]:
    """The plan's rows as the CSV files a fit reads: train, eval and (incremental) dev."""
    files = {"train": folder / "train.csv", "eval": folder / "eval.csv"}
    datamod.write_csv(files["train"], ((r.text, r.label) for r in plan.train))
    datamod.write_csv(files["eval"], ((r.text, r.label) for r in plan.eval))
    if plan.dev:
        files["dev"] = folder / "dev.csv"
        datamod.write_csv(files["dev"], ((r.text, r.label) for r in plan.dev))
    return files


def _gate(
    plan: Plan, fitted: Fitted, active: registry.ModelVersion | None, store: Store,
    settings: RetrainSettings,
) -> tuple[Decision, dict[str, Any]]:  # fmt: skip
    """The gate's decision, and both models' metrics on exactly the texts it compared."""
    labels = fitted.version.labels
    reference, why = chain_root(active) if active else (None, None)
    revision = None
    if reference is not None:
        with store.transaction() as tx:
            revision = versions.data_revision(tx, reference.tag)
    evidence, new = gather(
        plan, labels, fitted.eval_predictions, active, (reference, why, revision), settings
    )
    decision = decide(evidence, settings)
    decision.record["excluded_seen_by_active"] = len(plan.eval) - len(evidence.y)
    if "labels" in decision.record:
        decision.record["labels"]["suspects"] = suspects(evidence, new)
    y, act = evidence.y.tolist(), evidence.active
    metrics = {
        "candidate": classification_metrics(y, evidence.candidate.tolist(), labels),
        "active": classification_metrics(y, act.tolist(), labels) if act is not None else None,
        "gate": decision.record,
    }
    return decision, metrics


def run_job(job_id: str, store: Store, settings: RetrainSettings) -> JobState:
    """Run one claimed job to its final state; returns that state."""
    with store.transaction() as tx:
        job = jobs.get(tx, job_id)
        if job is None or job.state != JobState.RUNNING:
            raise LookupError(f"job {job_id} is not running (state: {job and job.state})")
        active_tag = versions.active_tag(tx, job.model_name)
        since = versions.data_revision(tx, active_tag) if active_tag else None
        snapshot = examples.snapshot(tx)
    active = registry.get(active_tag) if active_tag else None
    report = Reporter(store, job_id)
    if job.started_at is not None:  # claim to here: the process's start and imports
        report.phases["start"] = round((datetime.now(UTC) - job.started_at).total_seconds(), 2)
    with jobs.heartbeats(store, job_id):
        try:
            seed = int(job.params.get("training", {}).get("seed", DEFAULT_SEED))
            mode = job.params.get("mode", "auto")
            plan = make_plan(snapshot, mode, active, since, settings, seed)
        except PlanError as exc:
            return _end(store, job, JobState.REJECTED, decision=f"rejected: {exc}")
        report.lap("plan")
        summary = plan.summary | {
            "phases": report.phases,
            "data_revision": snapshot.revision,
            "compared_with": active_tag,
        }
        report(0.0, f"{plan.mode}: training on {len(plan.train)} examples ({plan.reason})",
               mode=plan.mode, summary=summary)  # fmt: skip
        streak = int(active.metadata.get("incremental_streak", 0)) if active else 0
        with tempfile.TemporaryDirectory(prefix="selftune-retrain-") as tmp:
            cfg = build_config(job, plan, write_plan(Path(tmp), plan), active, settings)
            fitted = run_fit(
                cfg,
                lambda fraction, message: report(FIT_SHARE * fraction, message),
                {
                    "mode": plan.mode,
                    "data_revision": snapshot.revision,
                    "incremental_streak": streak + 1 if plan.mode == "incremental" else 0,
                },
            )
        candidate = fitted.version
        report.lap("fit")
        with store.transaction() as tx:
            versions.set_status(
                tx, job.model_name, candidate.tag, VersionStatus.CANDIDATE, f"job {job_id}",
                data_revision=snapshot.revision,
            )  # fmt: skip
        report(FIT_SHARE, "gate: scoring the active version on the same texts", force=True,
               candidate_version=candidate.tag)  # fmt: skip
        decision, metrics = _gate(plan, fitted, active, store, settings)
        report.lap("gate")
    summary["phases"] = report.phases
    return _promote(store, job, candidate.tag, active_tag, decision, metrics, summary)


def _end(store: Store, job: Job, state: JobState, **fields: Any) -> JobState:
    with store.transaction() as tx:
        finished = jobs.finish(tx, job.id, state, **fields)
    return state if finished else JobState.FAILED


def _promote(
    store: Store, job: Job, tag: str, compared_with: str | None, decision: Decision,
    metrics: dict[str, Any], summary: dict[str, Any],
) -> JobState:  # fmt: skip
    """Record the decision and, if it promotes, swap the active record if it did not move."""
    message = decision.message
    state = JobState.SUCCEEDED if decision.promote else JobState.REJECTED
    with store.transaction() as tx:
        jobs.report(tx, job.id, 1.0, message, summary=summary)
    try:
        with store.transaction() as tx:
            if not jobs.finish(tx, job.id, state, decision=message, metrics=metrics):
                log.warning("job=%s was no longer running (declared dead); not promoting", job.id)
                return JobState.FAILED
            if decision.promote:
                versions.activate(
                    tx, job.model_name, tag, f"job {job.id}: {message}",
                    expected=compared_with, check_expected=True,
                )  # fmt: skip
    except ActiveChangedError as exc:
        message = f"rejected: {exc}"
        state = _end(store, job, JobState.REJECTED, decision=message, metrics=metrics)
    if state != JobState.SUCCEEDED:
        with store.transaction() as tx:
            versions.set_status(tx, job.model_name, tag, VersionStatus.REJECTED, message)
    log.info("job=%s version=%s %s", job.id, tag, message)
    return state
