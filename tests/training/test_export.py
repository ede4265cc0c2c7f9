"""Export proves parity through the serving code path, or fails with a typed error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from training.export import ParityError, check_parity, quantize_int8, torch_logits, write_onnx

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


def test_int8_file_is_smaller_and_close(exported: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    out, reference = exported
    int8_dir = tmp_path / "int8"
    int8_dir.mkdir()
    quantize_int8(out / "model.onnx", int8_dir / "model.onnx")
    (int8_dir / "tokenizer.json").write_bytes((out / "tokenizer.json").read_bytes())
    assert (int8_dir / "model.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    with pytest.raises(ParityError):  # int8 is not fp32-exact: budgets apply to metrics, not logits
        check_parity(reference, int8_dir, TEXTS, 64, atol=1e-7)
