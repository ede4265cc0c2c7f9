"""`fit` end to end: validate → split → fine-tune → export → parity → int8 → evaluate → register.

Three disjoint sets, so the reported numbers are honest:
- train: what the weights learn from;
- dev: carved from train, used only for early stopping and picking the best step;
- eval: the --eval-data file, or a split of the data (stratified, or the
  stable hash split that retraining uses); used once, on the exported artifact
  that will actually be served, to decide int8 vs fp32 and to report metrics.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.registry import METRICS_FILE, ONNX_FILE, REPORT_FILE, ModelVersion, register
from service.runtime import Classifier
from training import data as datamod
from training.config import TrainConfig
from training.data import LabeledData
from training.evaluate import evaluate_onnx
from training.export import check_parity, quantize_int8, torch_logits, write_onnx
from training.report import write_report
from training.strategies import merged_for_export
from training.train import ProgressFn, fine_tune, load_base

log = logging.getLogger(__name__)

PARITY_SAMPLES = 64
LIBRARIES = ("torch", "transformers", "peft", "onnx", "onnxruntime", "tokenizers", "bentoml")


@dataclass(frozen=True)
class Splits:
    train: LabeledData
    dev: LabeledData
    eval: LabeledData


def make_splits(cfg: TrainConfig) -> Splits:
    """Load and validate the data (raises DataError before any model is touched) and split it."""
    data = datamod.load(cfg.data, cfg.text_column, cfg.label_column)
    if cfg.eval_data is not None:
        held = datamod.load(
            cfg.eval_data, cfg.text_column, cfg.label_column, data.label_names, for_training=False
        )
        overlap = set(held.texts) & set(data.texts)
        if overlap:
            log.warning(
                "%d evaluation texts also appear in training data; dropping them from training",
                len(overlap),
            )
            data = data.subset(i for i, t in enumerate(data.texts) if t not in overlap)
        train = data
    elif cfg.split == "hash":
        train, held = datamod.hash_split(data, cfg.eval_fraction)
    else:
        train, held = datamod.stratified_split(data, cfg.eval_fraction, cfg.seed)
    train, dev = datamod.stratified_split(train, cfg.dev_fraction, cfg.seed, max_held=cfg.dev_max)
    log.info(
        "examples: train=%d dev=%d eval=%d labels=%s",
        len(train),
        len(dev),
        len(held),
        ",".join(data.label_names),
    )
    return Splits(train, dev, held)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def int8_within_budget(fp32_macro_f1: float, int8_macro_f1: float, budget: float) -> bool:
    """int8 is kept if it loses at most `budget` macro-F1 (absolute) against fp32."""
    return fp32_macro_f1 - int8_macro_f1 <= budget


def choose_precision(
    staging: Path, splits: Splits, cfg: TrainConfig
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Quantize to int8, keep it only within the macro-F1 budget.

    Returns (precision kept, its metrics, metrics of every precision tried).
    """
    fp32 = evaluate_onnx(Classifier(staging, cfg.max_length, cfg.cpu_threads), splits.eval)
    scores: dict[str, Any] = {"fp32": fp32}
    if not cfg.int8:
        return "fp32", fp32, scores
    fp32_path = staging / "model.fp32.onnx"
    (staging / ONNX_FILE).rename(fp32_path)
    quantize_int8(fp32_path, staging / ONNX_FILE)
    int8 = evaluate_onnx(Classifier(staging, cfg.max_length, cfg.cpu_threads), splits.eval)
    scores["int8"] = int8
    if int8_within_budget(fp32["macro_f1"], int8["macro_f1"], cfg.int8_budget):
        fp32_path.unlink()
        log.info("int8 kept: macro-F1 %.4f vs fp32 %.4f", int8["macro_f1"], fp32["macro_f1"])
        return "int8", int8, scores
    log.warning(
        "int8 lost %.4f macro-F1 (budget %.4f); keeping the fp32 model instead",
        fp32["macro_f1"] - int8["macro_f1"],
        cfg.int8_budget,
    )
    fp32_path.replace(staging / ONNX_FILE)
    return "fp32", fp32, scores


def run_fit(cfg: TrainConfig, progress: ProgressFn | None = None) -> ModelVersion:
    """Train, export and register one version; returns it. Raises DataError on bad data."""
    started = time.time()
    splits = make_splits(cfg)
    model, tokenizer = load_base(cfg, splits.train.label_names)
    result = fine_tune(cfg, model, tokenizer, splits.train, splits.dev, progress)
    final = merged_for_export(result.model)

    with tempfile.TemporaryDirectory(prefix="selftune-export-") as tmp:
        staging = Path(tmp)
        write_onnx(final, tokenizer, staging)
        sample = list(splits.eval.texts[:PARITY_SAMPLES])
        parity = check_parity(
            torch_logits(final, tokenizer, sample, cfg.max_length),
            staging,
            sample,
            cfg.max_length,
            cfg.parity_atol,
        )
        precision, evaluation, scores = choose_precision(staging, splits, cfg)
        metrics = {
            "evaluation": evaluation,
            "precision": precision,
            "fp32_macro_f1": scores["fp32"]["macro_f1"],
            "int8_macro_f1": scores["int8"]["macro_f1"] if "int8" in scores else None,
            "parity": {
                "max_abs_logit_diff": parity.max_abs_diff,
                "label_agreement": parity.agreement,
                "samples": parity.samples,
            },
            "training": {
                "steps": result.steps,
                "best_step": result.best_step,
                "best_dev_macro_f1": result.best_dev_macro_f1,
                "samples_per_s": result.samples_per_s,
                "train_seconds": result.seconds,
                "trainable_parameters": result.trainable_parameters,
                "bf16": result.bf16,
            },
            "history": result.history,
        }
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        write_report(
            staging / REPORT_FILE,
            evaluation,
            result.history,
            result.best_step,
            f"{cfg.name} · {cfg.strategy} · {precision}",
        )
        metadata = {
            "labels": list(splits.train.label_names),
            "max_length": cfg.max_length,
            "precision": precision,
            "base_model": cfg.base_model,
            "parent": cfg.parent,
            "config": cfg.model_dump(mode="json"),
            "data_fingerprint": {
                "train": splits.train.fingerprint(),
                "dev": splits.dev.fingerprint(),
                "eval": splits.eval.fingerprint(),
            },
            "examples": {
                "train": len(splits.train),
                "dev": len(splits.dev),
                "eval": len(splits.eval),
            },
            "eval_macro_f1": evaluation["macro_f1"],
            "libraries": library_versions(),
            "wall_seconds": round(time.time() - started, 1),
        }
        version = register(cfg.name, staging, metadata)
    log.info(
        "registered %s (%s, eval macro-F1 %.4f, %.0fs)",
        version.tag,
        precision,
        evaluation["macro_f1"],
        time.time() - started,
    )
    return version
