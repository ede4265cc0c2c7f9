"""`fit` end to end: validate → split → fine-tune → export → parity → int8 → evaluate →
calibrate and profile → register.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import profile
from core.registry import (
    EVAL_PREDICTIONS_FILE,
    HF_DIR,
    METRICS_FILE,
    REPORT_FILE,
    TRAINED_FILE,
    ModelVersion,
    register,
)
from core.runtime import Classifier, softmax
from core.text import text_key
from training import data as datamod
from training.config import TrainConfig
from training.data import LabeledData
from training.export import check_parity, torch_logits, write_onnx
from training.precision import choose_precision
from training.report import write_report
from training.strategies import merged_for_export
from training.temperature import calibrate
from training.train import average_with, fine_tune, load_base, warm_start_folder, weights

log = logging.getLogger(__name__)

PARITY_SAMPLES = 64
LIBRARIES = ("torch", "transformers", "peft", "onnx", "onnxruntime", "tokenizers", "bentoml")


@dataclass(frozen=True)
class Splits:
    train: LabeledData
    dev: LabeledData
    eval: LabeledData


def label_order(cfg: TrainConfig, found: Iterable[str]) -> tuple[str, ...]:
    """Sorted labels; when warm-starting, the version's labels first and new ones after."""
    if not cfg.init_from:
        return tuple(sorted(found))
    config = json.loads((Path(warm_start_folder(cfg.init_from)) / "config.json").read_text())
    known = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return (*known, *sorted(set(found) - set(known)))


def make_splits(cfg: TrainConfig) -> Splits:
    """Load and validate the data (raises DataError before any model is touched) and split it."""
    rows = datamod.read_examples(cfg.data, cfg.text_column, cfg.label_column)
    names = label_order(cfg, {r.label for r in rows})
    data = datamod.build_dataset(rows, names)
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
    if cfg.dev_data is not None:
        dev = datamod.load(
            cfg.dev_data, cfg.text_column, cfg.label_column, data.label_names, for_training=False
        )
    else:
        train, dev = datamod.stratified_split(
            train, cfg.dev_fraction, cfg.seed, max_held=cfg.dev_max
        )
    log.info(
        "examples: train=%d dev=%d eval=%d labels=%s",
        len(train),
        len(dev),
        len(held),
        ",".join(data.label_names),
    )
    return Splits(train, dev, held)


@dataclass
class PhaseClock:
    """Seconds spent per phase, for the metrics and the job record."""

    seconds: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.monotonic)

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = round(now - self._last, 2)
        self._last = now


def write_trained_keys(path: Path, texts: Iterable[str]) -> None:
    np.array(sorted({text_key(t) for t in texts}), dtype=np.uint64).tofile(path)


def write_eval_predictions(path: Path, texts: Sequence[str], predicted: Sequence[int]) -> None:
    keys = np.array([text_key(t) for t in texts], dtype=np.uint64)
    np.savez(path, keys=keys, predictions=np.array(predicted, dtype=np.int32))


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class Fitted:
    """A registered version, and its prediction per evaluation text (a gate reuses them)."""

    version: ModelVersion
    eval_predictions: list[int]


# Where each phase starts, as a share of the whole fit (training is most of it).
PHASES = {"export": 0.8, "quantize": 0.86, "register": 0.97}
Progress = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    pass


def run_fit(
    cfg: TrainConfig,
    progress: Progress | None = None,
    provenance: dict[str, Any] | None = None,
) -> Fitted:
    """Train, export and register one version; returns it. Raises DataError on bad data.

    `progress(fraction, message)` hears every training step and each later phase;
    `provenance` is added to the version's metadata (a retrain's mode and data revision).
    """
    report = progress or _no_progress
    started = time.time()
    clock = PhaseClock()
    splits = make_splits(cfg)
    model, tokenizer = load_base(cfg, splits.train.label_names)
    clock.lap("load")
    train_started = time.monotonic()

    def on_step(step: int, total: int) -> None:
        elapsed = time.monotonic() - train_started
        eta = elapsed / step * (total - step)
        report(
            PHASES["export"] * step / total,
            f"training step {step}/{total}, about {eta:.0f} s of training left",
        )

    start = weights(model) if cfg.average < 1 else None
    result = fine_tune(cfg, model, tokenizer, splits.train, splits.dev, on_step=on_step)
    clock.lap("train")
    final = merged_for_export(result.model)
    if start is not None:
        average_with(final, start, cfg.average)

    with tempfile.TemporaryDirectory(prefix="selftune-export-") as tmp:
        staging = Path(tmp)
        report(PHASES["export"], "exporting to ONNX")
        write_onnx(final, tokenizer, staging)
        final.save_pretrained(staging / HF_DIR)
        tokenizer.save_pretrained(staging / HF_DIR)
        write_trained_keys(staging / TRAINED_FILE, (*splits.train.texts, *splits.dev.texts))
        sample = list(splits.eval.texts[:PARITY_SAMPLES])
        parity = check_parity(
            torch_logits(final, tokenizer, sample, cfg.max_length),
            staging,
            sample,
            cfg.max_length,
            cfg.parity_atol,
        )
        clock.lap("export")
        span = PHASES["register"] - PHASES["quantize"]
        chosen = choose_precision(
            staging, splits.eval, splits.train.texts, cfg,
            lambda done, message: report(PHASES["quantize"] + span * done, message),
        )  # fmt: skip
        precision, evaluation = chosen.precision, chosen.evaluation
        write_eval_predictions(staging / EVAL_PREDICTIONS_FILE, splits.eval.texts, chosen.predicted)
        clock.lap("quantize_and_evaluate")
        calibration = calibrate(
            staging, Classifier(staging, cfg.max_length, cfg.cpu_threads),
            (list(splits.dev.texts), list(splits.dev.labels)), chosen.logits,
            list(splits.eval.labels),
        )  # fmt: skip
        profile.write(staging, profile.build(
            softmax(chosen.logits / calibration.temperature), splits.eval.labels,
            splits.eval.label_names,
        ))  # fmt: skip
        clock.lap("calibrate")
        report(PHASES["register"], "registering the version")
        metrics = {
            "evaluation": evaluation,
            "precision": precision,
            "fp32_macro_f1": chosen.fp32_macro_f1,
            "int8_macro_f1": chosen.int8_macro_f1,
            "precision_check": chosen.check,
            "calibration": calibration.record(),
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
            "phases": clock.seconds,
        }
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        write_report(
            staging / REPORT_FILE,
            evaluation,
            result.history,
            result.best_step,
            f"{cfg.name} · {cfg.strategy} · {precision}",
            calibration,
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
            "init_from": cfg.init_from and Path(cfg.init_from).name,
            "libraries": library_versions(),
            "wall_seconds": round(time.time() - started, 1),
            **(provenance or {}),
        }
        version = register(cfg.name, staging, metadata)
    log.info(
        "registered %s (%s, eval macro-F1 %.4f, %.0fs)",
        version.tag,
        precision,
        evaluation["macro_f1"],
        time.time() - started,
    )
    return Fitted(version, chosen.predicted)
