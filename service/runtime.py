"""Scoring text with an exported version: `tokenizers` + ONNX Runtime, no torch.

The one non-obvious part is how a batch is cut. Padding every text to the
longest one in a batch makes a batch of 64 tweets run rows of ~60 tokens for a
real mean of ~33, so batching lost to batch size 1 (shared/MACHINE_NOTES.md).
We sort a batch by token length and run it in chunks, each padded only to its
own longest text rounded up to a multiple of PAD_MULTIPLE. The rounding also
bounds how many distinct input shapes ONNX Runtime ever sees, which with the
CPU memory arena disabled keeps memory flat under mixed lengths
(onnxruntime#11627).
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

PAD_MULTIPLE = 8
CHUNK_ROWS = 16


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
    """A fast tokenizer that truncates to `max_length` and never pads (we pad per chunk)."""
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
    """Probabilities for a batch, plus what its padding cost (for the metrics)."""

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
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.input_names = {i.name for i in self.session.get_inputs()}

    def logits(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Raw logits, one row per text, in input order (export parity checks use these)."""
        return self._run(texts)[0]

    def score(self, texts: Sequence[str]) -> Scored:
        """Class probabilities, one row per text, in input order."""
        logits, real, padded = self._run(texts)
        return Scored(softmax(logits), real, padded)

    def _run(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], int, int]:
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        out: npt.NDArray[np.float32] | None = None
        real = padded = 0
        for start in range(0, len(order), CHUNK_ROWS):
            rows = order[start : start + CHUNK_ROWS]
            width = int(-(-lengths[rows].max() // PAD_MULTIPLE) * PAD_MULTIPLE)
            ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, idx in enumerate(rows):
                n = lengths[idx]
                ids[r, :n] = encodings[idx].ids
                mask[r, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            chunk = self.session.run(["logits"], feeds)[0].astype(np.float32)
            if out is None:
                out = np.empty((len(texts), chunk.shape[1]), dtype=np.float32)
            out[rows] = chunk
            real += int(lengths[rows].sum())
            padded += ids.size
        if out is None:
            raise ValueError("scoring needs at least one text")
        return out, real, padded

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Class probabilities, one row per text, in input order."""
        return self.score(texts).probabilities
