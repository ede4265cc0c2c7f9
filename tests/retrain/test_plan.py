"""What a retrain trains on, in-process: modes, new rows, replay size, skipped rows."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.registry import HF_DIR, ModelVersion
from core.settings import RetrainSettings
from core.text import EVAL_FRACTION, in_eval_split
from retrain.job import build_config, write_plan
from retrain.plan import PlanError, make_plan
from store.examples import Snapshot, StoredExample
from store.jobs import Job, JobState
from training.train import class_weights

SETTINGS = RetrainSettings(replay_ratio=2, replay_min=10, replay_max=50, refit_share=0.3)
NOW = datetime.now(UTC)


def snapshot(rows: list[tuple[str, str, int]]) -> Snapshot:
    stored = tuple(
        StoredExample(
            id=i, text=t, label=label, source=None, created_at=NOW, updated_at=NOW, revision=r
        )
        for i, (t, label, r) in enumerate(rows, start=1)
    )
    return Snapshot(max(r for *_, r in rows), stored)


def version(
    tmp_path: Path, labels: tuple[str, ...] = ("neg", "pos"), **meta: object
) -> ModelVersion:
    (tmp_path / HF_DIR).mkdir(exist_ok=True)
    (tmp_path / HF_DIR / "config.json").write_text("{}")
    return ModelVersion("m:v1", tmp_path, labels, 128, NOW, {"labels": list(labels), **meta})


OLD = [(f"old text number {i}", "pos" if i % 2 else "neg", 1) for i in range(300)]


def test_incremental_trains_on_every_new_training_row_plus_a_bounded_replay(
    tmp_path: Path,
) -> None:
    new = [(f"new text number {i}", "pos", 5) for i in range(20)]
    plan = make_plan(snapshot(OLD + new), "auto", version(tmp_path), 1, SETTINGS)

    assert plan.mode == "incremental"
    new_train = [t for t, *_ in new if not in_eval_split(t, EVAL_FRACTION)]
    trained = [r.text for r in plan.train]
    assert set(new_train) <= set(trained)
    assert plan.replayed == min(50, max(10, 2 * len(new_train)))
    assert len(trained) == len(new_train) + plan.replayed
    assert {r.label for r in plan.train if not r.new} == {"neg", "pos"}  # stratified
    assert plan.new_examples == len(new)
    assert not {r.text for r in plan.dev} & set(trained)
    assert all(r.eval for r in plan.eval)


def test_class_weights_of_an_incremental_come_from_the_whole_store_not_its_sample(
    tmp_path: Path,
) -> None:
    """The store is 9:1 neg:pos, so a refit weighs pos up; 40 new pos rows make the
    incremental sample nearly balanced. Weighing that sample by its own counts switched
    the weights off, and the candidate lost the minority class (the coachella topic)."""
    old = [(f"old text number {i}", "pos" if i % 10 == 0 else "neg", 1) for i in range(300)]
    new = [(f"new text number {i}", "pos", 5) for i in range(40)]
    plan = make_plan(snapshot(old + new), "incremental", version(tmp_path), 1, SETTINGS)
    store_train = Counter(label for t, label, _ in old + new if not in_eval_split(t, EVAL_FRACTION))
    assert plan.class_counts == store_train
    sample = Counter(r.label for r in plan.train)
    assert class_weights([sample["neg"], sample["pos"]]) is None  # the sample alone: balanced
    weights = class_weights([plan.class_counts["neg"], plan.class_counts["pos"]])
    assert weights is not None and weights[1] > weights[0]


def test_auto_refits_when_the_new_data_is_a_large_share(tmp_path: Path) -> None:
    new = [(f"new text number {i}", "pos", 5) for i in range(200)]
    plan = make_plan(snapshot(OLD + new), "auto", version(tmp_path), 1, SETTINGS)
    assert plan.mode == "refit" and "REFIT_SHARE" in plan.reason
    assert len(plan.train) == sum(not r.eval for r in plan.train + plan.eval)


def test_auto_refits_after_refit_every_incrementals_and_without_a_snapshot(
    tmp_path: Path,
) -> None:
    rows = snapshot([*OLD, ("one new text", "pos", 5)])
    tired = version(tmp_path, incremental_streak=SETTINGS.refit_every)
    assert make_plan(rows, "auto", tired, 1, SETTINGS).mode == "refit"
    unknown = make_plan(rows, "auto", version(tmp_path), None, SETTINGS)
    assert unknown.mode == "refit" and "not trained from the store" in unknown.reason
    with pytest.raises(PlanError, match="use mode 'refit'"):
        make_plan(rows, "incremental", version(tmp_path), None, SETTINGS)


def test_nothing_new_is_a_plan_error_not_a_job_failure(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="nothing to learn"):
        make_plan(snapshot(OLD), "incremental", version(tmp_path), 1, SETTINGS)


def test_an_empty_or_one_label_store_is_a_plan_error_not_a_job_failure() -> None:
    one_label = snapshot([(f"text number {i}", "pos", 1) for i in range(50)])
    for store in (Snapshot(0, ()), one_label):
        with pytest.raises(PlanError, match="nothing to train on"):
            make_plan(store, "auto", None, None, SETTINGS)


def test_unusable_rows_are_skipped_and_named(tmp_path: Path) -> None:
    rows = [*OLD, ("\u001c", "pos", 1), ("a fine new text", "  ", 5)]
    rows += [(f"rare text {i}", "rare", 5) for i in range(2)]
    plan = make_plan(snapshot(rows), "refit", version(tmp_path), 1, SETTINGS)
    reasons = {s["id"]: s["reason"] for s in plan.skipped}
    assert reasons[301] == "text is empty once surrounding whitespace is removed"
    assert reasons[302] == "label is empty once surrounding whitespace is removed"
    rare = [i for i in (303, 304) if i in reasons]
    assert rare and all("'rare' has" in reasons[i] for i in rare)
    assert plan.summary["skipped_count"] == len(plan.skipped)


def test_replay_keeps_enough_of_a_rare_label_to_train_on(tmp_path: Path) -> None:
    rare = [(f"rare old text {i}", "rare", 1) for i in range(12)]
    new = [(f"new text number {i}", "pos", 5) for i in range(20)]
    active = version(tmp_path, ("neg", "pos", "rare"))
    plan = make_plan(snapshot(OLD + rare + new), "incremental", active, 1, SETTINGS)
    rare_train = sum(not in_eval_split(t, EVAL_FRACTION) for t, *_ in rare)
    assert sum(r.label == "rare" for r in plan.train) == min(4, rare_train)


def job(training: dict[str, object] | None = None) -> Job:
    params = {"training": training} if training else {}
    return Job(
        id="j", model_name="m", state=JobState.RUNNING, params=params, progress=0, message=None,
        candidate_version=None, metrics=None, decision=None, error=None, mode=None,
        trigger="api", summary=None, created_at=NOW, started_at=NOW, finished_at=None,
    )  # fmt: skip


def test_a_small_incremental_trains_at_least_the_minimum_steps(tmp_path: Path) -> None:
    new = [(f"new text number {i}", "pos", 5) for i in range(20)]
    active = version(tmp_path)
    plan = make_plan(snapshot(OLD + new), "incremental", active, 1, SETTINGS)
    files = write_plan(tmp_path, plan)
    cfg = build_config(job(), plan, files, active, SETTINGS)
    steps = cfg.epochs * len(plan.train) / cfg.batch_size
    assert cfg.epochs > SETTINGS.incremental_epochs
    assert steps == pytest.approx(SETTINGS.incremental_min_steps)
    asked = build_config(job({"epochs": 1.0}), plan, files, active, SETTINGS)
    assert asked.epochs == 1.0  # a request's own epochs win
    few = SETTINGS.model_copy(update={"incremental_min_steps": 0})
    assert build_config(job(), plan, files, active, few).epochs == SETTINGS.incremental_epochs
