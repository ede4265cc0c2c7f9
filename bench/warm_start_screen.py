"""Screen incremental (warm-start) recipes on topic shifts, in-process, without export.

    H=/tmp/screen; BENTOML_HOME=$H/bentoml STATE_DIR=$H/state HF_HUB_OFFLINE=1 \
      .venv/bin/python bench/warm_start_screen.py --recipes '{}' '{"lr": 3e-5}' --alphas 0.5

The setup version is a refit through the real job code (retrain.job.run_job, in
this process) on the store of bench/topics.py, made once per BENTOML_HOME. Per
topic, N and seed the real retrain plan (retrain.plan: the N posted rows,
class-stratified replay, 200 old dev rows) is trained with each recipe
(TrainConfig overrides on top of the job's own config, or `replay_ratio`,
`replay_min`, `replay_max` for the plan) in torch, and scored in torch on the
bench's held-out sets: macro-F1 on the topic and on the rest, and the change
from the setup version. `--alphas` also scores WiSE-FT weight averages
(active + alpha * (fine-tuned - active)) of each fitted model. Each run also
prints how the posted labels, and the same texts with wrong labels, look to the
active model (retrain/labels.py, the gate's wrong-label check). Raw numbers:
bench/out/warm_start_screen.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from retrain_helpers import cpu_info
from sklearn.metrics import f1_score
from topics import TOPIC_SETS, Row, Shifts, load_shifts, wrong_labels

from core import registry
from core.settings import RetrainSettings
from core.text import EVAL_FRACTION, in_eval_split
from retrain.job import build_config, run_job, write_plan
from retrain.labels import label_noise
from retrain.plan import Plan, make_plan
from store import examples, jobs, open_store, versions
from store.examples import Snapshot, StoredExample
from store.jobs import Job, JobState
from training.pipeline import make_splits
from training.train import (
    average_with,
    bf16_available,
    encode,
    fine_tune,
    load_base,
    predict_logits,
    weights,
)

OUT = Path(__file__).resolve().parent / "out"
PLAN_FIELDS = ("replay_ratio", "replay_min", "replay_max")


def setup(shifts: Shifts, settings: RetrainSettings, epochs: float) -> registry.ModelVersion:
    """The active version: a refit job on the store, run here once per BENTOML_HOME."""
    store = open_store(settings.resolved_database_url)
    with store.transaction() as tx:
        active = versions.active_tag(tx, settings.model_name)
    if active is not None:
        return registry.get(active)
    with store.transaction() as tx:
        rows = [examples.NewExample(t, y) for t, y in shifts.store]
        examples.add(tx, rows, "base")
        params = {"mode": "refit", "training": {"epochs": epochs}}
        job = jobs.create(tx, settings.model_name, params)
    claimed = jobs.claim_next(store)
    assert claimed is not None and claimed.id == job.id
    state = run_job(job.id, store, settings)
    assert state == JobState.SUCCEEDED, state
    with store.transaction() as tx:
        return registry.get(versions.active_tag(tx, settings.model_name) or "")


def snapshot_with(store_rows: Snapshot, posted: list[Row]) -> Snapshot:
    """The store's rows, and `posted` as new rows after them (as POST /examples adds them)."""
    now = datetime.now(UTC)
    revision = store_rows.revision + 1
    base_id = max(r.id for r in store_rows.rows) + 1
    fields = {"source": "topic", "created_at": now, "updated_at": now, "revision": revision}
    new = tuple(
        StoredExample(id=base_id + i, text=t, label=y, **fields) for i, (t, y) in enumerate(posted)
    )
    return Snapshot(revision, store_rows.rows + new)


class Scorer:
    """Macro-F1 of torch models on the bench's held-out sets (bf16 where the CPU has it)."""

    def __init__(self, tokenizer: Any, labels: tuple[str, ...], sets: dict[str, list[Row]]):
        self.labels = labels
        self.pad = tokenizer.pad_token_id or 0
        self.sets = {
            name: (encode(tokenizer, [t for t, _ in rows], 128), [y for _, y in rows])
            for name, rows in sets.items()
        }

    def __call__(self, model: torch.nn.Module, bf16: bool) -> dict[str, float]:
        scores = {}
        for name, (ids, truth) in self.sets.items():
            predicted = predict_logits(model, ids, self.pad, bf16).argmax(1)
            named = [self.labels[i] for i in predicted]
            scores[name] = round(float(f1_score(truth, named, average="macro")), 4)
        return scores


def run_one(
    plan: Plan, cfg: Any, scorer_sets: dict[str, list[Row]], alphas: list[float],
    before: dict[str, float],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Fit one recipe; its scores at alpha 1 and each WiSE-FT alpha, and training facts.

    `before` gets the active model's scores (alpha 0) if it has none yet."""
    splits = make_splits(cfg)
    model, tokenizer = load_base(cfg, splits.train.label_names)
    start = weights(model)
    scorer = Scorer(tokenizer, splits.train.label_names, scorer_sets)
    if not before:
        before |= scorer(model, bf16_available())
    began = time.monotonic()
    result = fine_tune(cfg, model, tokenizer, splits.train, splits.dev)
    facts = {"train_s": round(time.monotonic() - began, 1), "steps": result.steps,
             "best_step": result.best_step, "trained": len(plan.train)}  # fmt: skip
    scores = [{"alpha": 1.0, **scorer(result.model, result.bf16)}]
    fitted = weights(result.model)
    for alpha in alphas:
        average_with(result.model, start, alpha)
        scores.append({"alpha": alpha, **scorer(result.model, result.bf16)})
        average_with(result.model, fitted, 0.0)
    return scores, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--topic-set",
        choices=sorted(TOPIC_SETS),
        default="screen",
        help="held out of the store; the matrix's own topics are 'matrix'",
    )
    parser.add_argument("--topics", nargs="+", default=None, help="default: the whole set")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--recipes", type=json.loads, nargs="+", default=[{}], metavar="JSON")
    parser.add_argument("--alphas", type=float, nargs="*", default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setup-epochs", type=float, default=1.0)
    args = parser.parse_args()
    if "BENTOML_HOME" not in os.environ or "STATE_DIR" not in os.environ:
        sys.exit("set BENTOML_HOME and STATE_DIR: the setup version and its store live there")
    OUT.mkdir(exist_ok=True)
    shifts = load_shifts(TOPIC_SETS[args.topic_set])
    settings = RetrainSettings(model_name="screen", retrain_threads=args.threads)
    active = setup(shifts, settings, args.setup_epochs)
    store = open_store(settings.resolved_database_url)
    with store.transaction() as tx:
        base = examples.snapshot(tx)
        since = versions.data_revision(tx, active.tag)
    results: dict[str, Any] = {"command": " ".join(sys.argv), "cpu": cpu_info(),
                               "active": active.tag, "runs": []}  # fmt: skip
    print(f"CPU {results['cpu']}\nactive {active.tag}; store {len(base.rows)} rows", flush=True)
    job = Job(id="screen", model_name=settings.model_name, state=JobState.RUNNING, params={},
              progress=0, message=None, candidate_version=None, metrics=None, decision=None,
              error=None, mode=None, summary=None, created_at=datetime.now(UTC),
              started_at=None, finished_at=None)  # fmt: skip
    tmp = OUT / "screen-data"
    reference = [(r.text, r.label) for r in base.rows if in_eval_split(r.text, EVAL_FRACTION)]
    for topic in args.topics or list(shifts.topics):
        sets = {"topic": shifts.topics[topic].eval, "rest": shifts.rest_eval}
        before: dict[str, float] = {}
        for n in args.sizes:
            for seed in args.seeds:
                posted = shifts.topics[topic].posted(n, seed)
                noise = {
                    kind: label_noise(active, rows, reference, settings.retrain_threads).summary()
                    for kind, rows in (("posted", posted),
                                       ("wrong", wrong_labels(posted, list(active.labels), seed)))
                }  # fmt: skip
                for recipe in args.recipes:
                    plan_settings = settings.model_copy(
                        update={k: v for k, v in recipe.items() if k in PLAN_FIELDS}
                    )
                    snap = snapshot_with(base, posted)
                    plan = make_plan(snap, "incremental", active, since, plan_settings, seed)
                    files = write_plan(tmp, plan)
                    cfg = build_config(job, plan, files, active, settings)
                    train_fields = {k: v for k, v in recipe.items() if k not in PLAN_FIELDS}
                    cfg = cfg.model_copy(update={"seed": seed, **train_fields})
                    scores, facts = run_one(plan, cfg, sets, args.alphas, before)
                    run = {"topic": topic, "n": n, "seed": seed, "recipe": recipe, **facts,
                           "before": before, "scores": scores, "noise": noise}  # fmt: skip
                    results["runs"].append(run)
                    (OUT / "warm_start_screen.json").write_text(json.dumps(results, indent=1))
                    print(json.dumps(run), flush=True)


if __name__ == "__main__":
    main()
