"""The service a user would write first, for bench/serve_bench.py to measure us against.

BentoML's own example shape on the same model.onnx: one worker, ORT with every
core, adaptive batching, each batch padded to its longest text.

    NAIVE_MODEL_DIR=/path/to/version bentoml serve naive_service:Naive --working-dir bench
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

MODEL_DIR = Path(os.environ.get("NAIVE_MODEL_DIR", "."))


@bentoml.service(workers=1)
class Naive:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        self.session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), options)
        self.tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=128)
        self.tokenizer.enable_padding()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=5000)
    def predict(self, texts: list[str]) -> list[dict[str, float]]:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        logits = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
        return [{"label": int(p.argmax()), "score": float(p.max())} for p in probs]
