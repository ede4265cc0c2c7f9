"""First run: serve a quick model within two minutes, then let the service train the real one.

`make serve` runs `python -m retrain bootstrap` before `bentoml serve`. When
the model store already holds a version of MODEL_NAME this does nothing.
Otherwise it
1. puts the tweet-sentiment corpus (`training.corpus`) into the example store;
2. fine-tunes a first version on a small stratified slice of its training split,
   evaluated on a slice of its evaluation split, through the training CLI
   (a child process: this side never imports torch);
3. queues a refit job: the service's own job queue trains the default model on
   everything in the background and promotes it through the gate, like any retrain.
"""

from __future__ import annotations

import argparse
import logging
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from core import registry
from core.settings import RetrainSettings
from core.text import EVAL_FRACTION, in_eval_split
from retrain.plan import Row, stratified_sample
from store import examples as store_examples
from store import jobs, open_store
from training.corpus import clean_rows, corpus_path
from training.data import write_csv

log = logging.getLogger(__name__)

QUICK_TRAIN = 800
QUICK_EVAL = 300
# The background refit's budget: the default model (0.80 macro-F1 needs more; see bench/).
REFIT_EPOCHS = 0.3
SOURCE = "bootstrap"


def import_corpus(settings: RetrainSettings, rows: list[tuple[str, str]]) -> int:
    """Put the corpus into the example store (again is harmless); returns the store's total."""
    store = open_store(settings.resolved_database_url)
    with store.transaction() as tx:
        result = store_examples.add(
            tx, [store_examples.NewExample(t, label) for t, label in rows], SOURCE
        )
    log.info("example store: %d imported, %d already there", result.accepted, result.duplicates)
    return result.total


def quick_slices(rows: list[tuple[str, str]], seed: int = 0) -> tuple[list[Row], list[Row]]:
    """A stratified training slice and evaluation slice, each from its own side of the split."""
    tagged = [
        Row(i, t, label, True, in_eval_split(t, EVAL_FRACTION), 0)
        for i, (t, label) in enumerate(rows)
    ]
    rng = random.Random(seed)
    train = stratified_sample([r for r in tagged if not r.eval], QUICK_TRAIN, rng)
    held = stratified_sample([r for r in tagged if r.eval], QUICK_EVAL, rng)
    return train, held


def fit_quick(settings: RetrainSettings, train: list[Row], held: list[Row]) -> None:
    with tempfile.TemporaryDirectory(prefix="selftune-bootstrap-") as tmp:
        train_csv, eval_csv = Path(tmp) / "train.csv", Path(tmp) / "eval.csv"
        write_csv(train_csv, ((r.text, r.label) for r in train))
        write_csv(eval_csv, ((r.text, r.label) for r in held))
        command = [
            sys.executable, "-m", "training", "fit", "--data", str(train_csv),
            "--eval-data", str(eval_csv), "--name", settings.model_name, "--epochs", "1",
            "--no-store",  # it saw a slice only: the first retrain must be a refit
        ]  # fmt: skip
        log.info("no version of %r yet; training a first one on %d texts", settings.model_name,
                 len(train))  # fmt: skip
        subprocess.run(command, check=True)


def queue_refit(settings: RetrainSettings) -> str:
    store = open_store(settings.resolved_database_url)
    with store.transaction() as tx:
        job = jobs.create(
            tx,
            settings.model_name,
            {"mode": "refit", "training": {"epochs": REFIT_EPOCHS}},
            trigger="bootstrap",
        )
    log.info("queued job %s: the service trains the default model on every example", job.id)
    return job.id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.parse_args(argv)
    settings = RetrainSettings()
    existing = registry.latest(settings.model_name)
    if existing is not None:
        log.info("model %s is in the store; nothing to train", existing.tag)
        return 0
    rows = clean_rows(corpus_path().read_bytes())
    import_corpus(settings, rows)
    fit_quick(settings, *quick_slices(rows))
    queue_refit(settings)
    return 0
