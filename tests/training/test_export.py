"""Export proves parity through the serving code path, or fails with a typed error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnxruntime.quantization import quantize_dynamic
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from core import registry
from core.registry import HF_DIR, ONNX_FILE, TOKENIZER_FILE
from core.runtime import Classifier
from training.export import (
    ParityError,
    _Calibrater,
    check_parity,
    quantize_int8,
    torch_logits,
    write_onnx,
)
from training.report import write_report

TEXTS = [
    "the movie was great",
    "bad food",
    "a very very long text that is not so good at all really",
    "ok",
]
CALIBRATION = [
    "the food was good",
    "it was bad, really bad",
    "great service and a great view from the table",
    "not good",
    "fine",
    "the worst day, the worst movie and the worst food of the year",
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


@pytest.fixture(scope="module")
def trained_exports(
    tiny_version: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, np.ndarray]:
    """fp32 and static int8 folders of a trained model (a random head's logits are all near
    zero, so nothing is "close"), and PyTorch's logits for TEXTS."""
    trained = registry.get(tiny_version).path / HF_DIR
    model = AutoModelForSequenceClassification.from_pretrained(str(trained))
    tokenizer = AutoTokenizer.from_pretrained(str(trained))
    fp32_dir, int8_dir = tmp_path_factory.mktemp("fp32"), tmp_path_factory.mktemp("int8")
    write_onnx(model, tokenizer, fp32_dir)
    (int8_dir / TOKENIZER_FILE).write_bytes((fp32_dir / TOKENIZER_FILE).read_bytes())
    quantize_int8(fp32_dir / ONNX_FILE, int8_dir / ONNX_FILE, CALIBRATION, 64)
    return fp32_dir, int8_dir, torch_logits(model, tokenizer, TEXTS, 64)


def test_int8_file_is_smaller_and_close(trained_exports: tuple[Path, Path, np.ndarray]) -> None:
    fp32_dir, int8_dir, reference = trained_exports
    assert (int8_dir / ONNX_FILE).stat().st_size < (fp32_dir / ONNX_FILE).stat().st_size
    with pytest.raises(ParityError):  # int8 is not fp32-exact: budgets apply to metrics, not logits
        check_parity(reference, int8_dir, TEXTS, 64, atol=1e-7)
    # ... but close: the same labels, logits within a small fraction of their spread.
    int8 = Classifier(int8_dir, 64, threads=1).logits(TEXTS)
    assert (int8.argmax(1) == reference.argmax(1)).all()
    assert np.abs(int8 - reference).max() < 0.1 * np.ptp(reference)


def test_calibration_runs_on_the_given_threads_without_spinning(
    trained_exports: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    # ORT's own calibration session takes a spinning thread per core (0 = its default).
    fp32_dir, _, _ = trained_exports
    calibrater = _Calibrater(fp32_dir / ONNX_FILE, tmp_path / "augmented.onnx", threads=1)
    calibrater.augment_graph()
    calibrater.create_inference_session()
    options = calibrater.infer_session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_exports_batch_texts_and_every_row_is_bit_identical_to_its_run_alone(
    trained_exports: tuple[Path, Path, np.ndarray], precision: str
) -> None:
    fp32_dir, int8_dir, _ = trained_exports
    folder = fp32_dir if precision == "fp32" else int8_dir
    texts = [*TEXTS, *CALIBRATION]
    padded = Classifier(folder, 64, threads=1, max_padding=10.0)  # one run: pad to the longest
    assert padded.batch_invariant
    alone = np.concatenate([padded.logits([t]) for t in texts])
    together = padded.logits(texts)
    assert np.array_equal(together, alone)
    assert len({float(row.max()) for row in alone}) > len(texts) // 2  # distinct rows


def test_a_dynamically_quantized_file_runs_one_text_at_a_time(
    trained_exports: tuple[Path, Path, np.ndarray], tmp_path: Path
) -> None:
    """The previous release's int8 takes activation scales from the whole input: batching it
    would make texts change each other's scores, so the runtime must not."""
    fp32_dir, _, _ = trained_exports
    (tmp_path / TOKENIZER_FILE).write_bytes((fp32_dir / TOKENIZER_FILE).read_bytes())
    unmarked = onnx.load(str(fp32_dir / ONNX_FILE))  # as the previous release exported it
    del unmarked.metadata_props[:]
    onnx.save(unmarked, str(tmp_path / "fp32.onnx"))
    quantize_dynamic(
        str(tmp_path / "fp32.onnx"),
        str(tmp_path / ONNX_FILE),
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # the fused ops' outputs
    )
    legacy = Classifier(tmp_path, 64, threads=1, max_padding=10.0)
    assert not legacy.batch_invariant and legacy.max_rows == 1
    texts = [*TEXTS, *CALIBRATION]
    alone = np.concatenate([legacy.logits([t]) for t in texts])
    assert np.array_equal(legacy.logits(texts), alone)


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
