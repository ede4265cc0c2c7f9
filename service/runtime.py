"""Scoring text with an exported version: `tokenizers` + ONNX Runtime, no torch.

The one non-obvious part is that every text runs through the model on its own,
at its exact token length, even when a batch of hundreds arrives. Two
measurements on the 2-core target decided this (shared/MACHINE_NOTES.md and
bench/SERVING.md):

* Padding to the longest text made a batch of 64 tweets run rows of ~60 tokens
  for a real mean of ~33, so batching lost to batch size 1. With no padding at
  all a batch costs exactly the sum of its texts, so it can never lose.
* The int8 models are dynamically quantized: each MatMul's activation scale is
  taken from the min/max of the *whole* input tensor, padding included. Rows
  that share a run therefore change each other's scores (up to 4e-3 in
  probability, flipping labels near a boundary). One text per run makes a
  text's answer independent of whatever it was batched with.

The price: grouping texts of equal length into one unpadded run measured up
to ~15% faster in-process on MiniLM int8, but brings the cross-talk back; we
take exact answers. Adaptive batching still pays off above this layer: one
thread hop, one `encode_batch` and one metrics update per batch instead of per
request. Memory stays flat although ORT sees every sequence length from 2 to
max_length, because the CPU memory arena, which otherwise grows with each new
shape (onnxruntime#11627), is disabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from service.registry import ONNX_FILE, TOKENIZER_FILE


def session_options(threads: int) -> ort.SessionOptions:
    """ORT options with an explicit thread budget: BentoML sets none per worker."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = False
    return opts


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """A fast tokenizer that truncates to `max_length` and never pads (texts run one by one)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Scored:
    """Probabilities for a batch, plus the tokens it held and the tokens the model ran on.

    The two token counts are equal while texts run unpadded; the metrics keep
    both so that any future padding shows up as a gap on the dashboard.
    """

    probabilities: npt.NDArray[np.float32]
    real_tokens: int
    padded_tokens: int


class Classifier:
    """A model folder (model.onnx + tokenizer.json) loaded for inference.

    Thread-safe for concurrent `predict_proba` calls: ORT sessions allow
    concurrent `run`, and the tokenizer is read-only after construction.
    """

    def __init__(self, model_dir: Path, max_length: int, threads: int) -> None:
        self.session = ort.InferenceSession(
            str(model_dir / ONNX_FILE),
            sess_options=session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self.tokenizer = load_tokenizer(model_dir / TOKENIZER_FILE, max_length)
        self.input_names = {i.name for i in self.session.get_inputs()}

    def logits(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Raw logits, one row per text, in input order (export parity checks use these)."""
        return self._run(texts)[0]

    def score(self, texts: Sequence[str]) -> Scored:
        """Class probabilities, one row per text, in input order."""
        logits, real, padded = self._run(texts)
        return Scored(softmax(logits), real, padded)

    def _run(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], int, int]:
        if not texts:
            raise ValueError("scoring needs at least one text")
        encodings = self.tokenizer.encode_batch(list(texts))
        rows = [self._run_one(encoding.ids) for encoding in encodings]
        tokens = sum(len(encoding.ids) for encoding in encodings)
        # Nothing is padded: the model runs on exactly the real tokens.
        return np.concatenate(rows).astype(np.float32, copy=False), tokens, tokens

    def _run_one(self, ids: list[int]) -> npt.NDArray[np.float32]:
        """Logits for one tokenized text, shape (1, labels)."""
        input_ids = np.array([ids], dtype=np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        logits: npt.NDArray[np.float32] = self.session.run(["logits"], feeds)[0]
        return logits

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Class probabilities, one row per text, in input order."""
        return self.score(texts).probabilities
