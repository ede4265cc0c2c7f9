"""Export a trained classifier to ONNX, prove it matches PyTorch, and quantize it.

Parity is checked through the *serving* code path (`core.runtime.Classifier`:
tokenizers + ONNX Runtime), not a bare ORT call, so a broken tokenizer.json or
a wrong input name fails here, at training time, instead of in production.
Failures raise typed errors that carry the numbers.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    MinMaxCalibrater,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
    save_tensors_data,
)
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from core.registry import ONNX_FILE, TOKENIZER_FILE
from core.runtime import BATCH_INVARIANT, Classifier, feeds, load_tokenizer, session_options
from training.errors import ExportError

log = logging.getLogger(__name__)

ONNX_OPSET = 17
# Dynamic axes are data: batch and sequence vary per call.
DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
    "logits": {0: "batch"},
}


class ParityError(ExportError):
    def __init__(self, max_abs_diff: float, agreement: float, atol: float) -> None:
        super().__init__(
            f"ONNX logits differ from PyTorch by up to {max_abs_diff:.2e} (allowed {atol:.0e}); "
            f"labels agree on {agreement:.1%} (required 100%)"
        )
        self.max_abs_diff = max_abs_diff
        self.agreement = agreement


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    agreement: float
    samples: int


class _LogitsOnly(nn.Module):
    """Give the exporter a plain (input_ids, attention_mask) -> logits graph."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits


def write_onnx(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Write model.onnx (fp32, fused) and tokenizer.json into `out_dir`; returns the ONNX path."""
    model = model.float().eval()
    sample = tokenizer(
        ["an example", "a second, longer example text"], padding=True, return_tensors="pt"
    )
    path = out_dir / ONNX_FILE
    trained_with = model.config._attn_implementation
    # ORT's fusions recognise the eager attention graph; SDPA's export (IsNaN, Where) they miss.
    model.set_attn_implementation("eager")
    try:
        _export(model, sample, path)
    finally:
        model.set_attn_implementation(trained_with)
    fuse(path, model.config)
    tokenizer.backend_tokenizer.save(str(out_dir / TOKENIZER_FILE))
    return path


def _export(model: PreTrainedModel, sample: Mapping[str, torch.Tensor], path: Path) -> None:
    with torch.inference_mode():
        # The TorchScript exporter: the dynamo one needs onnxscript and gains nothing here.
        torch.onnx.export(
            _LogitsOnly(model),
            (sample["input_ids"], sample["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes=DYNAMIC_AXES,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def fuse(path: Path, config: PretrainedConfig) -> None:
    """ORT's transformer fusions, in place: attention, LayerNorm, GELU and embeddings each one op.

    Fewer, larger ops, and the MatMuls left are the projections static int8
    quantizes. An architecture the fusions do not know keeps its graph (logged).
    Level 0: graph rewrites only, nothing tied to this machine's CPU.
    """
    options = FusionOptions("bert")
    options.use_multi_head_attention = True  # projections stay MatMuls, so int8 reaches them
    fused = optimize_model(
        str(path),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        optimization_options=options,
        opt_level=0,
    )
    log.info("ONNX fusions: %s", fused.get_fused_operator_statistics())
    mark_batch_invariant(fused.model)  # fp32 rows never mix: the served model may batch them
    fused.save_model_to_file(str(path))


def add_marks(model: onnx.ModelProto, marks: dict[str, str]) -> None:
    """Add metadata entries `core.runtime.Classifier` reads, keeping the ones already there
    (`onnx.helper.set_model_props` alone replaces them all)."""
    kept = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, kept | marks)


def mark_batch_invariant(model: onnx.ModelProto) -> None:
    """Record in the model that a row's logits depend on that row alone.

    `core.runtime.Classifier` batches only such models; a file without the mark
    (a dynamically quantized one from an earlier release) runs one text at a time.
    """
    add_marks(model, {BATCH_INVARIANT: "true"})


def torch_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
) -> np.ndarray:
    """Reference logits from PyTorch, fp32, one text at a time (no padding effects)."""
    model = model.float().eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits[0])
    return torch.stack(rows).numpy()


def check_parity(
    reference: np.ndarray, model_dir: Path, texts: Sequence[str], max_length: int, atol: float
) -> ParityReport:
    """Compare serving-path ONNX logits with `reference`; raises ParityError past `atol`."""
    onnx = Classifier(model_dir, max_length, threads=1).logits(texts)
    diff = float(np.abs(onnx - reference).max())
    agreement = float((onnx.argmax(1) == reference.argmax(1)).mean())
    log.info(
        "parity: max |dlogit| %.2e, label agreement %.2f%% on %d texts",
        diff,
        100 * agreement,
        len(texts),
    )
    if diff > atol or agreement < 1.0:
        raise ParityError(diff, agreement, atol)
    return ParityReport(diff, agreement, len(texts))


class _Calibration(CalibrationDataReader):
    """Training texts, one per run at its exact length, fed as the runtime feeds them."""

    def __init__(self, encodings: Iterator[list[int]]) -> None:
        self._encodings = encodings

    def get_next(self) -> dict[str, np.ndarray] | None:
        ids = next(self._encodings, None)
        return None if ids is None else dict(feeds([ids]))


class _Calibrater(MinMaxCalibrater):
    """ORT's min/max calibration on a session with our thread budget, not spinning.

    Its own session takes ORT's default: a thread per core, spinning. On 2 cores
    that burnt 37 s of CPU for 19 s of calibration, the same wall time as one
    thread (18.8-19.8 s; 256 tweets, MiniLM-L6), and a retrain under load paid
    for the spinning out of the share its session gets (runner/local.py).
    """

    def __init__(self, model: Path, augmented: Path, threads: int) -> None:
        super().__init__(model, ["MatMul"], augmented_model_path=str(augmented))
        self._options = session_options(threads, spin=False)
        self._options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def create_inference_session(self) -> None:
        providers = self.execution_providers
        self.infer_session = ort.InferenceSession(
            self.augmented_model_path, sess_options=self._options, providers=providers
        )


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls with no constant input: attention's scores and context, left in fp32."""
    constants = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and not constants.intersection(node.input)
    ]


def float_bypass(model: onnx.ModelProto) -> None:
    """Let only MatMuls read an activation through its QuantizeLinear/DequantizeLinear pair.

    The quantizer routes every consumer of a quantized tensor through the pair,
    so the residual Adds and LayerNorms beside the MatMuls would read int8-rounded
    values: extra ops, and rounding error in the residual stream. They read the
    float tensor instead; ORT then folds each remaining pair into its MatMul.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    bypass = {}
    for node in model.graph.node:
        source = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is not None and source.op_type == "QuantizeLinear":
            bypass[node.output[0]] = source.input[0]
    for node in model.graph.node:
        if node.op_type != "MatMul":
            for k, name in enumerate(node.input):
                node.input[k] = bypass.get(name, name)


def quantize_int8(
    fp32_path: Path, int8_path: Path, calibration: Sequence[str], max_length: int, threads: int = 1
) -> None:
    """Static int8 (QDQ) of the weight MatMuls, activation scales calibrated on `calibration`.

    Static scales make each row's answer independent of the rows it runs with
    (dynamic quantization takes them from the whole input tensor), so the
    runtime may batch texts and stay exact. Weights are per-channel int8,
    activations uint8 (the VNNI-friendly pair); attention's activation x
    activation MatMuls, LayerNorm, Softmax and GELU stay fp32, and MatMul
    outputs are not re-quantized (ORT runs MatMulIntegerToFloat). On a tweets
    MiniLM (bench/SERVING.md) quantizing every op lost 1.4 macro-F1 points and
    ran 0.7x the dynamic int8 rate; this recipe on the fused graph lost 0.27 and
    matches dynamic int8 text for text. Calibration runs on `threads` (`_Calibrater`).
    """
    tokenizer = load_tokenizer(fp32_path.parent / TOKENIZER_FILE, max_length)
    encodings = (e.ids for e in tokenizer.encode_batch(list(calibration)))
    with tempfile.TemporaryDirectory(prefix="selftune-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference tells the quantizer which tensors are float (the fused ops' outputs
        # too); auto_merge lets it reconcile the position ids' Min(512, sequence) with sequence.
        quant_pre_process(str(fp32_path), str(prepared), auto_merge=True)
        calibrater = _Calibrater(prepared, Path(tmp) / "augmented.onnx", threads)
        calibrater.augment_graph()
        calibrater.create_inference_session()
        calibrater.collect_data(_Calibration(encodings))
        ranges = Path(tmp) / "ranges.json"
        save_tensors_data(calibrater.compute_data(), ranges)
        del calibrater  # its session and collected outputs
        quantize_static(
            str(prepared),
            str(int8_path),
            None,
            calibration_cache_path=ranges,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=activation_matmuls(onnx.load(str(prepared))),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
        )
    quantized = onnx.load(str(int8_path))
    float_bypass(quantized)
    mark_batch_invariant(quantized)
    onnx.save(quantized, str(int8_path))
