"""Training throughput, ours vs the HF Trainer, interleaved (A B A B ...) in one process.

This machine's speed drifts by up to 1.5x over minutes, so the two loops take
turns for `--rounds` rounds of `--steps` steps each on the same tweets, and we
report per-round samples/s and the ratio of medians. Same base model, batch
size, learning rate, max length; each side keeps its own defaults otherwise
(ours: bf16, eager attention, no dropout, length grouping, frozen word embeddings; the
Trainer: fp32, random batches, dynamic padding).

    .venv/bin/python bench/train_throughput.py --rounds 3 --steps 60
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from training.config import TrainConfig
from training.data import load, stratified_split
from training.train import fine_tune, load_base

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "tweets-sentiment"
OUT = Path(__file__).resolve().parent / "out"


def ours(cfg: TrainConfig, train: Any, dev: Any, steps: int) -> float:
    epochs = steps * cfg.batch_size / len(train)
    run = cfg.model_copy(update={"epochs": epochs, "evals_per_epoch": 1})
    model, tokenizer = load_base(run, train.label_names)
    return fine_tune(run, model, tokenizer, train, dev).samples_per_s


def trainer(cfg: TrainConfig, train: Any, steps: int) -> float:
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.base_model, num_labels=len(train.label_names)
    )
    enc = tokenizer(list(train.texts), truncation=True, max_length=cfg.max_length)
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": y}
        for i, m, y in zip(enc["input_ids"], enc["attention_mask"], train.labels, strict=True)
    ]
    args = TrainingArguments(
        output_dir=str(OUT / "trainer-throughput"),
        learning_rate=cfg.lr,
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=cfg.seed,
    )
    result = Trainer(
        model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer)
    ).train()
    return float(result.metrics["train_samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load(DATA / "train.csv")
    subset, _ = stratified_split(data, 0.8, seed=0)  # ~6k tweets are plenty for throughput
    train, dev = stratified_split(subset, 0.05, seed=0, max_held=200)
    cfg = TrainConfig(data=DATA / "train.csv")
    results: dict[str, list[float]] = {"ours": [], "trainer": []}
    for round_ in range(args.rounds):
        results["ours"].append(ours(cfg, train, dev, args.steps))
        results["trainer"].append(trainer(cfg, train, args.steps))
        print(round_, {k: round(v[-1], 1) for k, v in results.items()}, flush=True)
    summary = {
        "rounds": results,
        "median_ours": statistics.median(results["ours"]),
        "median_trainer": statistics.median(results["trainer"]),
    }
    summary["ratio"] = summary["median_ours"] / summary["median_trainer"]
    OUT.mkdir(exist_ok=True)
    (OUT / "train_throughput.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
