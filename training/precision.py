"""int8 or fp32: quantize, and keep int8 only within the macro-F1 budget against fp32.

Both precisions are compared on every evaluation text, but fp32 runs only on the
texts whose label int8 could have changed. It first runs on a seeded sample,
which measures how far int8 moves the gap between its top label and any other
(the "margin"); then on every text whose int8 margin is within `SAFETY` times
the sample's 99th-percentile move. Elsewhere the two labels agree unless a text
moves more than that. Measured with bench/precision_screen.py (two tweets
models, 2,000 texts each, int8 changed 42 and 33 labels): over 50
sample draws this rule missed no change and ran fp32 on 35-37% of the texts;
twice the sample's largest move, also missing none, ran it on 44-48% (one
outlier widens it); fp32 on the first 2,000 texts, as before, took ~16 s of a
75 s incremental retrain.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from core.registry import ONNX_FILE, TOKENIZER_FILE
from core.runtime import Classifier
from training.config import TrainConfig
from training.data import LabeledData
from training.evaluate import classification_metrics
from training.export import quantize_int8

log = logging.getLogger(__name__)

# Training texts that set int8's static activation scales, run one by one through fp32
# (~5 s here). On the tweets MiniLM, 64 and 256 texts gave int8 within 0.1 macro-F1 point.
CALIBRATION_TEXTS = 256
# Evaluation texts fp32 scores at random to measure how far int8 moves a margin.
ERROR_SAMPLE = 256
# fp32 also scores every text whose int8 margin is within SAFETY x the sample's MOVE_QUANTILE.
SAFETY = 2.0
MOVE_QUANTILE = 0.99

Logits = npt.NDArray[np.float32]
Progress = Callable[[float, str], None]  # (share of this phase done, message)


@dataclass(frozen=True)
class Chosen:
    """The precision kept, its metrics and predictions, and how the check compared."""

    precision: str
    evaluation: dict[str, Any]
    predicted: list[int]
    fp32_macro_f1: float
    int8_macro_f1: float | None
    check: dict[str, Any]
    logits: Logits  # the kept model's, on the evaluation texts (for calibration)


def int8_within_budget(fp32_macro_f1: float, int8_macro_f1: float, budget: float) -> bool:
    """int8 is kept if it loses at most `budget` macro-F1 (absolute) against fp32."""
    return fp32_macro_f1 - int8_macro_f1 <= budget


def margin_moves(int8: Logits, fp32: Logits) -> npt.NDArray[np.float32]:
    """Per text, how far fp32 moves any gap between int8's top label and another label."""
    rows = np.arange(len(int8))
    top = int8.argmax(axis=1)
    gaps8 = int8[rows, top][:, None] - int8
    gaps32 = fp32[rows, top][:, None] - fp32
    moves: npt.NDArray[np.float32] = np.abs(gaps8 - gaps32).max(axis=1)
    return moves


def margins(logits: Logits) -> npt.NDArray[np.float32]:
    """Per text, the gap between the top logit and the runner-up."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    gaps: npt.NDArray[np.float32] = top2[:, 1] - top2[:, 0]
    return gaps


def fp32_labels(
    int8: Logits, fp32: Callable[[list[int]], Logits], seed: int, sample_size: int = ERROR_SAMPLE
) -> tuple[npt.NDArray[np.int64], dict[str, Any]]:
    """fp32's label for every row of `int8`, calling `fp32(rows)` only where it could differ.

    The module doc says how: a seeded sample measures how far int8 moves margins,
    then every row whose int8 margin is within SAFETY x MOVE_QUANTILE of that is scored.
    """
    sample = sorted(random.Random(seed).sample(range(len(int8)), min(len(int8), sample_size)))
    sampled = fp32(sample)
    move = float(np.quantile(margin_moves(int8[sample], sampled), MOVE_QUANTILE))
    close = margins(int8) <= SAFETY * move
    close[sample] = False
    rest = [int(i) for i in np.flatnonzero(close)]
    labels = int8.argmax(axis=1)
    labels[sample] = sampled.argmax(axis=1)
    if rest:
        labels[rest] = fp32(rest).argmax(axis=1)
    check = {
        "texts": len(int8),
        "fp32_scored": len(sample) + len(rest),
        "margin_move_q99": round(move, 4),
        "screen_margin": round(SAFETY * move, 4),
    }
    return labels, check


def choose_precision(staging: Path, held: LabeledData, train_texts: Sequence[str],
                     cfg: TrainConfig, progress: Progress) -> Chosen:  # fmt: skip
    """Quantize staging's fp32 model.onnx; keep int8 only within `cfg.int8_budget`.

    `held` is the evaluation set, scored on the model that stays in `staging`;
    `train_texts` supply the calibration sample.
    """
    texts, labels = held.texts, held.labels

    def metrics(predicted: Sequence[int] | npt.NDArray[np.int64]) -> dict[str, Any]:
        return classification_metrics(labels, [int(p) for p in predicted], held.label_names)

    fp32 = Classifier(staging, cfg.max_length, cfg.cpu_threads)

    def fp32_only(reason: str) -> Chosen:
        progress(0.5, f"evaluating fp32 on {len(texts)} held-out texts")
        logits = fp32.logits(texts)
        predicted = [int(i) for i in logits.argmax(axis=1)]
        evaluation = metrics(predicted)
        return Chosen("fp32", evaluation, predicted, evaluation["macro_f1"], None,
                      {"why": reason}, logits)  # fmt: skip

    if not cfg.int8:
        return fp32_only("int8 off")
    int8_dir = staging / "int8"
    int8_dir.mkdir()
    shutil.copy(staging / TOKENIZER_FILE, int8_dir / TOKENIZER_FILE)
    try:
        progress(0.0, "quantizing to int8")
        calibration = random.Random(cfg.seed).sample(
            list(train_texts), min(len(train_texts), CALIBRATION_TEXTS)
        )
        try:
            fp32_path, int8_path = staging / ONNX_FILE, int8_dir / ONNX_FILE
            quantize_int8(fp32_path, int8_path, calibration, cfg.max_length, cfg.cpu_threads)
        except Exception:  # its shape inference raises bare Exceptions on graphs it cannot follow
            log.exception("int8 quantization failed; keeping the fp32 model")
            return fp32_only("int8 quantization failed")
        progress(0.4, f"evaluating int8 on {len(texts)} held-out texts")
        int8 = Classifier(int8_dir, cfg.max_length, cfg.cpu_threads).logits(texts)
        progress(0.8, "comparing int8 with fp32 where their labels may differ")
        reference, check = fp32_labels(
            int8, lambda rows: fp32.logits([texts[i] for i in rows]), cfg.seed
        )
        int8_labels = int8.argmax(axis=1)
        predicted = [int(i) for i in int8_labels]
        fp32_f1 = metrics(reference)["macro_f1"]
        evaluation = metrics(predicted)
        check["label_flips"] = int((reference != int8_labels).sum())
        if not int8_within_budget(fp32_f1, evaluation["macro_f1"], cfg.int8_budget):
            log.warning(
                "int8 lost %.4f macro-F1 (budget %.4f); keeping the fp32 model instead",
                fp32_f1 - evaluation["macro_f1"], cfg.int8_budget,
            )  # fmt: skip
            lost = fp32_only("int8 over the macro-F1 budget")
            return Chosen("fp32", lost.evaluation, lost.predicted, lost.fp32_macro_f1,
                          evaluation["macro_f1"], check, lost.logits)  # fmt: skip
        (int8_dir / ONNX_FILE).replace(staging / ONNX_FILE)
        log.info(
            "int8 kept: macro-F1 %.4f vs fp32 %.4f on %d texts (fp32 ran on %d)",
            evaluation["macro_f1"], fp32_f1, len(texts), check["fp32_scored"],
        )  # fmt: skip
        return Chosen("int8", evaluation, predicted, fp32_f1, evaluation["macro_f1"], check, int8)
    finally:
        shutil.rmtree(int8_dir)
