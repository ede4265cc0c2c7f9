"""Export proves parity through the serving code path, or fails with a typed error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from core import registry
from core.registry import HF_DIR
from core.runtime import Classifier
from training.export import ParityError, check_parity, quantize_int8, torch_logits, write_onnx
from training.report import write_report

TEXTS = [
    "the movie was great",
    "bad food",
    "a very very long text that is not so good at all really",
    "ok",
]


@pytest.fixture(scope="module")
def exported(
    tiny_base_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray]:
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_base_model), num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_model))
    out = tmp_path_factory.mktemp("export")
    write_onnx(model, tokenizer, out)
    return out, torch_logits(model, tokenizer, TEXTS, 64)


def test_onnx_matches_pytorch_with_dynamic_batch_and_length(
    exported: tuple[Path, np.ndarray],
) -> None:
    out, reference = exported
    report = check_parity(reference, out, TEXTS, 64, atol=1e-4)
    assert report.max_abs_diff <= 1e-4 and report.agreement == 1.0 and report.samples == len(TEXTS)


def test_parity_failure_is_a_typed_error_with_numbers(exported: tuple[Path, np.ndarray]) -> None:
    out, reference = exported
    shifted = reference.copy()
    shifted[0] += 0.01
    with pytest.raises(ParityError, match=r"differ from PyTorch by up to 1\.00e-02") as info:
        check_parity(shifted, out, TEXTS, 64, atol=1e-4)
    assert info.value.max_abs_diff == pytest.approx(0.01, rel=1e-3)


def test_int8_file_is_smaller_and_close(tiny_version: str, tmp_path: Path) -> None:
    """On a trained model (a random head's logits are all near zero, so nothing is "close")."""
    trained = registry.get(tiny_version).path / HF_DIR
    model = AutoModelForSequenceClassification.from_pretrained(str(trained))
    tokenizer = AutoTokenizer.from_pretrained(str(trained))
    fp32_dir, int8_dir = tmp_path / "fp32", tmp_path / "int8"
    fp32_dir.mkdir()
    int8_dir.mkdir()
    write_onnx(model, tokenizer, fp32_dir)
    reference = torch_logits(model, tokenizer, TEXTS, 64)
    quantize_int8(fp32_dir / "model.onnx", int8_dir / "model.onnx")
    (int8_dir / "tokenizer.json").write_bytes((fp32_dir / "tokenizer.json").read_bytes())
    assert (int8_dir / "model.onnx").stat().st_size < (fp32_dir / "model.onnx").stat().st_size
    with pytest.raises(ParityError):  # int8 is not fp32-exact: budgets apply to metrics, not logits
        check_parity(reference, int8_dir, TEXTS, 64, atol=1e-7)
    # ... but close: the same labels, logits within a small fraction of their spread.
    int8 = Classifier(int8_dir, 64, threads=1).logits(TEXTS)
    assert (int8.argmax(1) == reference.argmax(1)).all()
    assert np.abs(int8 - reference).max() < 0.1 * np.ptp(reference)


def test_the_report_draws_labels_with_dollar_signs(tmp_path: Path) -> None:
    """Labels are user text: "$^$" in one made matplotlib's mathtext fail the fit."""
    metrics = {
        "labels": ["costs $^$ a lot", "free", "other"],
        "confusion_matrix": [[2, 0, 0], [0, 1, 1], [0, 0, 3]],
        "macro_f1": 0.9,
        "accuracy": 0.9,
    }
    history = [{"step": 1, "train_loss": 1.0, "dev_loss": 1.0, "dev_macro_f1": 0.5}]
    write_report(tmp_path / "report.png", metrics, history, 1, "labels with $")
    assert (tmp_path / "report.png").stat().st_size > 1000
