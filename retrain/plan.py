"""What a retrain trains on: the mode, the rows, the replay sample, and what it skips.

Every stored example belongs to training or evaluation by a stable hash of
its text (`core.text.in_eval_split`). An incremental run trains on the
training-split rows added or relabeled since the active version's data
revision, plus a class-stratified replay sample of the older ones, sized by
the new data (RETRAIN_REPLAY_*), never by the store. A refit trains on all.
A row training cannot use is skipped and named, never a reason to fail.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from core.registry import ModelVersion
from core.settings import RetrainSettings
from core.text import EVAL_FRACTION, clean_label, clean_text, in_eval_split
from store.examples import Snapshot
from training.data import MIN_PER_LABEL

Mode = Literal["incremental", "refit"]
Requested = Literal["auto", "incremental", "refit"]
# Old training rows held out (beside the replay) to pick the best step of an incremental run.
INCREMENTAL_DEV = 200
MAX_NAMED_SKIPS = 50


class PlanError(ValueError):
    """This retrain cannot run as asked; the message says what to do instead."""


@dataclass(frozen=True)
class Row:
    id: int
    text: str
    label: str
    new: bool  # added or relabeled since the active version's data revision
    eval: bool
    revision: int  # the store revision that last wrote it


@dataclass
class Plan:
    mode: Mode
    reason: str
    train: list[Row]
    dev: list[Row]
    eval: list[Row]
    new_examples: int
    replayed: int
    skipped: list[dict[str, object]] = field(default_factory=list)
    # Labels over the store's whole training split: class weights come from these, so an
    # incremental sample (new rows skew it) weighs classes as the refit it builds on did.
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, object]:
        return {
            "new_examples": self.new_examples,
            "replayed_examples": self.replayed,
            "trained_examples": len(self.train),
            "eval_examples": len(self.eval),
            "skipped_count": len(self.skipped),
            "skipped_examples": self.skipped[:MAX_NAMED_SKIPS],
            "reason": self.reason,
        }


def _usable(snapshot: Snapshot, since: int | None) -> tuple[list[Row], list[dict[str, object]]]:
    """Rows that pass the intake rules today, and the ones that do not (with why)."""
    rows, skipped = [], []
    for ex in snapshot.rows:
        try:
            text, label = clean_text(ex.text), clean_label(ex.label)
        except ValueError as exc:
            skipped.append({"id": ex.id, "reason": str(exc)})
            continue
        new = since is None or ex.revision > since
        rows.append(Row(ex.id, text, label, new, in_eval_split(text, EVAL_FRACTION), ex.revision))
    return rows, skipped


def _drop_small_labels(rows: list[Row], skipped: list[dict[str, object]]) -> list[Row]:
    """Training rows of labels with fewer than MIN_PER_LABEL training rows are skipped."""
    counts = Counter(r.label for r in rows)
    small = {label for label, n in counts.items() if n < MIN_PER_LABEL}
    for r in rows:
        if r.label in small:
            skipped.append(
                {
                    "id": r.id,
                    "reason": f"label {r.label!r} has {counts[r.label]} training example(s); "
                    f"at least {MIN_PER_LABEL} are needed to learn it",
                }
            )
    return [r for r in rows if r.label not in small]


def stratified_sample(
    rows: Sequence[Row], size: int, rng: random.Random, floor: int = 1
) -> list[Row]:
    """About `size` rows keeping each label's share, and at least `floor` of each label
    (all of a label that has fewer)."""
    if size >= len(rows):
        return list(rows)
    by_label: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_label[r.label].append(r)
    picked: list[Row] = []
    for label in sorted(by_label):
        group = by_label[label]
        take = min(len(group), max(floor, round(size * len(group) / len(rows))))
        picked.extend(rng.sample(group, take))
    return picked


def replay_size(new_train: int, old_available: int, settings: RetrainSettings) -> int:
    wanted = round(settings.replay_ratio * new_train)
    return min(old_available, max(settings.replay_min, min(settings.replay_max, wanted)))


def choose_mode(
    requested: Requested,
    active: ModelVersion | None,
    since: int | None,
    rows: Sequence[Row],
    settings: RetrainSettings,
) -> tuple[Mode, str]:
    """The mode that runs and why; PlanError if `incremental` was asked and cannot run."""
    blocker = None
    if active is None:
        blocker = "no version is active to warm-start from"
    elif not active.warm_startable:
        blocker = f"{active.tag} keeps no fine-tuned weights (made before incremental retraining)"
    elif since is None:
        blocker = f"{active.tag} was not trained from the store, so what is new is unknown"
    elif set(active.labels) - {r.label for r in rows if not r.eval}:
        gone = sorted(set(active.labels) - {r.label for r in rows if not r.eval})
        blocker = f"label(s) {', '.join(gone)} of {active.tag} have no training examples now"
    if requested == "refit":
        return "refit", "refit requested"
    if blocker is not None:
        if requested == "incremental":
            raise PlanError(f"an incremental retrain cannot run: {blocker}; use mode 'refit'")
        return "refit", f"auto chose refit: {blocker}"
    assert active is not None
    if requested == "incremental":
        return "incremental", "incremental requested"
    train = [r for r in rows if not r.eval]
    share = sum(r.new for r in train) / max(1, len(train))
    if share > settings.refit_share:
        return "refit", (
            f"auto chose refit: new examples are {share:.0%} of the training data "
            f"(over REFIT_SHARE {settings.refit_share:.0%})"
        )
    streak = int(active.metadata.get("incremental_streak", 0))
    if streak >= settings.refit_every:
        return "refit", (
            f"auto chose refit: {streak} incremental versions since the last refit "
            f"(REFIT_EVERY {settings.refit_every})"
        )
    return "incremental", f"auto chose incremental ({share:.1%} of the training data is new)"


def make_plan(
    snapshot: Snapshot,
    requested: Requested,
    active: ModelVersion | None,
    since: int | None,
    settings: RetrainSettings,
    seed: int = 42,
) -> Plan:
    rows, skipped = _usable(snapshot, since)
    mode, reason = choose_mode(requested, active, since, rows, settings)
    train_rows = _drop_small_labels([r for r in rows if not r.eval], skipped)
    labels = {r.label for r in train_rows}
    if len(labels) < 2:
        raise PlanError(
            f"nothing to train on: the store's training split has {len(train_rows)} usable "
            f"example(s) of {len(labels)} label(s); a classifier needs two or more labels "
            f"with {MIN_PER_LABEL} training examples each: add examples (POST /examples)"
        )
    eval_rows = []
    for r in (r for r in rows if r.eval):
        if r.label in labels:
            eval_rows.append(r)
        else:
            skipped.append(
                {
                    "id": r.id,
                    "reason": f"evaluation example of label {r.label!r}, which "
                    "no training example has",
                }
            )
    new_examples = sum(r.new for r in rows) if since is not None else len(rows)
    counts = dict(Counter(r.label for r in train_rows))
    if mode == "refit":
        return Plan(mode, reason, train_rows, [], eval_rows, new_examples, 0, skipped, counts)
    rng = random.Random(seed)
    new = [r for r in train_rows if r.new]
    old = [r for r in train_rows if not r.new]
    if not new:
        raise PlanError(
            "nothing to learn: no training-split example was added or relabeled since the "
            "active version; add examples (POST /examples) or use mode 'refit'"
        )
    # Every label keeps MIN_PER_LABEL rows in training: a rare label is not forgotten,
    # and the data stays valid for the trainer.
    replay = stratified_sample(
        old, replay_size(len(new), len(old), settings), rng, floor=MIN_PER_LABEL
    )
    chosen = {r.id for r in replay}
    dev = stratified_sample([r for r in old if r.id not in chosen], INCREMENTAL_DEV, rng)
    return Plan(
        mode, reason, new + replay, dev, eval_rows, new_examples, len(replay), skipped, counts
    )
