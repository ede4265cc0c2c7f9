"""How far static int8 moves a version's margins, and what the int8 check's screen would miss.

    .venv/bin/python bench/precision_screen.py --version <version folder with hf/> \
        --texts ../shared/datasets/tweets-sentiment/validation.csv

Exports the version's weights to fp32 and static int8 as a fit does, scores
every text with both, then draws the check's seeded sample (`--draws` times)
and reports, per threshold (the sample's largest or 99th/95th-percentile margin
move, times 1-3), the share of texts fp32 would score and the int8 label
changes the screen would miss (training/precision.py uses the largest, x2).
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from core.registry import HF_DIR, ONNX_FILE, TOKENIZER_FILE
from core.runtime import Classifier
from training.export import quantize_int8, write_onnx
from training.precision import CALIBRATION_TEXTS, ERROR_SAMPLE, margin_moves, margins

STATISTICS: dict[str, Callable[[np.ndarray], float]] = {
    "largest": lambda a: float(a.max()),
    "q99": lambda a: float(np.quantile(a, 0.99)),
    "q95": lambda a: float(np.quantile(a, 0.95)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", type=Path, required=True)
    parser.add_argument("--texts", type=Path, required=True, help="a CSV with a text column")
    parser.add_argument("--limit", type=int, default=4000)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    with args.texts.open(newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][: args.limit]
    model = AutoModelForSequenceClassification.from_pretrained(args.version / HF_DIR)
    tokenizer = AutoTokenizer.from_pretrained(args.version / HF_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_dir, int8_dir = Path(tmp), Path(tmp) / "int8"
        write_onnx(model, tokenizer, fp32_dir)
        int8_dir.mkdir()
        (int8_dir / TOKENIZER_FILE).write_bytes((fp32_dir / TOKENIZER_FILE).read_bytes())
        calibration = random.Random(42).sample(texts, min(len(texts), CALIBRATION_TEXTS))
        quantize_int8(fp32_dir / ONNX_FILE, int8_dir / ONNX_FILE, calibration, args.max_length)
        fp32 = Classifier(fp32_dir, args.max_length, threads=1).logits(texts)
        int8 = Classifier(int8_dir, args.max_length, threads=1).logits(texts)
    moves, gaps = margin_moves(int8, fp32), margins(int8)
    changed = int8.argmax(1) != fp32.argmax(1)
    q99 = np.quantile(moves, 0.99)
    print(f"{len(texts)} texts, int8 changed {changed.sum()} labels; margin moves: "
          f"median {np.median(moves):.3f}, q99 {q99:.3f}, max {moves.max():.3f}")  # fmt: skip
    print("| threshold | fp32 scores | missed changes per draw (mean / max) |\n|---|---|---|")
    rng = np.random.default_rng(0)
    for name, statistic in STATISTICS.items():
        for factor in (1.0, 1.5, 2.0, 3.0):
            shares, missed = [], []
            for _ in range(args.draws):
                sample = rng.choice(len(texts), min(len(texts), ERROR_SAMPLE), replace=False)
                scored = gaps <= factor * statistic(moves[sample])
                scored[sample] = True
                shares.append(scored.mean())
                missed.append(int((changed & ~scored).sum()))
            print(f"| {factor:g} x {name} | {np.mean(shares):.1%} "
                  f"| {np.mean(missed):.2f} / {max(missed)} |")  # fmt: skip


if __name__ == "__main__":
    main()
