"""Scoring text with an exported version: `tokenizers` + ONNX Runtime, no torch.

Every text runs through the model on its own, at its exact length: dynamically
quantized int8 takes activation scales from the whole input tensor, so texts
sharing a run would change each other's scores. The CPU arena is off so memory
stays flat across sequence lengths (onnxruntime#11627). docs/DESIGN.md has the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from core.registry import ONNX_FILE, TOKENIZER_FILE


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
    """A batch's logits, probabilities and tokens (the model ran on exactly those)."""

    logits: npt.NDArray[np.float32]
    probabilities: npt.NDArray[np.float32]
    tokens: int


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
        logits, tokens = self._run(texts)
        return Scored(logits, softmax(logits), tokens)

    def _run(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], int]:
        if not texts:
            raise ValueError("scoring needs at least one text")
        encodings = self.tokenizer.encode_batch(list(texts))
        rows = [self._run_one(encoding.ids) for encoding in encodings]
        tokens = sum(len(encoding.ids) for encoding in encodings)
        return np.concatenate(rows).astype(np.float32, copy=False), tokens

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

    def predict_indices(self, texts: Sequence[str], chunk: int = 256) -> list[int]:
        """The most probable label index per text, scored `chunk` texts at a time."""
        winners: list[int] = []
        for start in range(0, len(texts), chunk):
            probs = self.predict_proba(texts[start : start + chunk])
            winners.extend(int(i) for i in probs.argmax(axis=1))
        return winners
