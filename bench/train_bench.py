"""Training benchmark: `training fit` (defaults) vs the HF Trainer vs TF-IDF + logistic regression.

Run by hand (`make bench-train`, ~50 min on 2 cores; `--seed N` for another
draw of both fine-tunes); results go to bench/out/train_bench_seed{N}.json and
are written up in bench/TRAINING.md.

All three train on tweets-sentiment train.csv and are scored on
validation.csv, in one run of this script, on the same machine state:
- ours: `python -m training fit` with its defaults, as a user runs it; the
  scores are those of the exported (int8 or fp32) ONNX artifact;
- the Hugging Face Trainer with the same base model, data and
  hyperparameters (lr, epochs, batch size, warmup, weight decay, max length),
  its own defaults otherwise (fp32, dynamic padding, random batches);
- TF-IDF word 1-2-grams + char 2-5-grams with logistic regression.

One validation set of 2,000 texts leaves about a point of noise in each
macro-F1, so ours and the Trainer are also compared *paired*: a bootstrap over
the same resampled texts gives the difference with its 95% interval.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "tweets-sentiment"
OUT = ROOT / "bench" / "out"


def run_ours(train: Path, valid: Path, seed: int) -> dict[str, Any]:
    from core.registry import get
    from core.runtime import Classifier
    from training.data import load

    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "fit",
            "--data",
            str(train),
            "--eval-data",
            str(valid),
            "--name",
            "bench-train",
            "--seed",
            str(seed),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    tag = proc.stdout.strip().splitlines()[-1]
    version = get(tag)
    metrics = version.metrics()
    va = load(valid, label_names=version.labels, for_training=False)
    served = Classifier(version.path, version.max_length, threads=os.cpu_count() or 1)
    return {
        "tag": tag,
        "wall_s": wall,
        "macro_f1": metrics["evaluation"]["macro_f1"],
        "accuracy": metrics["evaluation"]["accuracy"],
        "samples_per_s": metrics["training"]["samples_per_s"],
        "precision": metrics["precision"],
        "fp32_macro_f1": metrics["fp32_macro_f1"],
        "int8_macro_f1": metrics["int8_macro_f1"],
        "steps": metrics["training"]["steps"],
        "best_step": metrics["training"]["best_step"],
        "predictions": [version.labels[i] for i in served.logits(list(va.texts)).argmax(1)],
    }


def run_trainer(train: Path, valid: Path, seed: int) -> dict[str, Any]:
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from training.config import TrainConfig
    from training.data import load

    cfg = TrainConfig(data=train)  # our defaults: the hyperparameters both runs share
    torch.set_num_threads(os.cpu_count() or 1)
    tr = load(train)
    va = load(valid, label_names=tr.label_names, for_training=False)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
    set_seed(seed)  # before the new head is initialised, or each run draws another one
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.base_model, num_labels=len(tr.label_names)
    )

    def to_ds(d: Any) -> list[dict[str, Any]]:
        enc = tokenizer(list(d.texts), truncation=True, max_length=cfg.max_length)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": label}
            for ids, mask, label in zip(
                enc["input_ids"], enc["attention_mask"], d.labels, strict=True
            )
        ]

    steps = int(np.ceil(len(tr) / cfg.batch_size) * cfg.epochs)
    args = TrainingArguments(
        output_dir=str(OUT / "trainer"),
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64,
        warmup_steps=int(cfg.warmup * steps),
        weight_decay=cfg.weight_decay,
        seed=seed,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        logging_steps=100,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=to_ds(tr),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    started = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - started
    pred = trainer.predict(to_ds(va)).predictions.argmax(-1)
    return {
        "wall_s": wall,
        "macro_f1": float(f1_score(va.labels, pred, average="macro")),
        "accuracy": float(accuracy_score(va.labels, pred)),
        "samples_per_s": float(out.metrics["train_samples_per_second"]),
        "predictions": [tr.label_names[i] for i in pred],
    }


def run_tfidf(train: Path, valid: Path, seed: int) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline, make_union

    from training.data import load

    tr = load(train)
    va = load(valid, label_names=tr.label_names, for_training=False)
    started = time.perf_counter()
    model = make_pipeline(
        make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
        ),
        LogisticRegression(max_iter=2000, C=4.0, class_weight="balanced"),
    )
    model.fit(list(tr.texts), list(tr.labels))
    wall = time.perf_counter() - started
    pred = model.predict(list(va.texts))
    return {
        "wall_s": wall,
        "macro_f1": float(f1_score(va.labels, pred, average="macro")),
        "accuracy": float(accuracy_score(va.labels, pred)),
    }


def macro_f1(gold: np.ndarray, pred: np.ndarray, classes: int) -> float:
    """Macro-F1 from label ids, fast enough to resample thousands of times."""
    confusion = np.bincount(gold * classes + pred, minlength=classes * classes)
    confusion = confusion.reshape(classes, classes)
    tp = np.diag(confusion).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * tp / (confusion.sum(0) + confusion.sum(1))
    return float(np.nan_to_num(f1).mean())


def paired_bootstrap(
    gold: list[str], ours: list[str], theirs: list[str], rounds: int = 2000
) -> dict[str, float]:
    """Macro-F1 of ours minus theirs on the same resampled texts: the difference and its 95% CI.

    Paired, because both models face the same hard and easy texts: the
    difference varies far less than either score does on its own.
    """
    names = sorted(set(gold))
    ids = {name: i for i, name in enumerate(names)}
    g, a, b = (np.array([ids[x] for x in seq]) for seq in (gold, ours, theirs))
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(rounds):
        sample = rng.integers(0, len(g), len(g))
        diffs.append(
            macro_f1(g[sample], a[sample], len(names)) - macro_f1(g[sample], b[sample], len(names))
        )
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {
        "macro_f1_diff": macro_f1(g, a, len(names)) - macro_f1(g, b, len(names)),
        "ci95_low": float(low),
        "ci95_high": float(high),
        "share_of_resamples_ours_not_worse": float(np.mean(np.array(diffs) >= 0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["ours", "trainer", "tfidf"], action="append")
    parser.add_argument("--train", type=Path, default=DATA / "train.csv")
    parser.add_argument("--valid", type=Path, default=DATA / "validation.csv")
    parser.add_argument("--seed", type=int, default=42, help="seed of ours and the Trainer")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    train, valid = args.train, args.valid
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    for name, fn in (("tfidf", run_tfidf), ("ours", run_ours), ("trainer", run_trainer)):
        if args.only and name not in args.only:
            continue
        load_before = os.getloadavg()[0]
        results[name] = fn(train, valid, args.seed) | {"loadavg_1m_before": load_before}
        shown = {k: v for k, v in results[name].items() if k != "predictions"}
        print(name, json.dumps(shown), flush=True)
    if "ours" in results and "trainer" in results:
        results["speedup_samples_per_s"] = (
            results["ours"]["samples_per_s"] / results["trainer"]["samples_per_s"]
        )
        from training.data import load

        va = load(valid, for_training=False)
        results["ours_vs_trainer"] = paired_bootstrap(
            [va.label_names[i] for i in va.labels],
            results["ours"]["predictions"],
            results["trainer"]["predictions"],
        )
    (OUT / f"train_bench_seed{args.seed}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k not in ("ours", "trainer")}))


if __name__ == "__main__":
    main()
