"""Scoring text with an exported version: `tokenizers` + ONNX Runtime, no torch.

Texts are sorted by length and run in groups padded by at most MAX_PADDING, so
a batch costs little more than its real tokens. That is exact only for a model
whose rows cannot affect each other: fp32, or static int8 (the export marks such
files BATCH_INVARIANT). A dynamically quantized file from an earlier release
takes activation scales from the whole input tensor, so it runs one text at a
time. With more than one thread, a batch of several runs goes side by side, a run
per thread on a one-thread session, rather than each run on every thread. The CPU
arena is off, so memory does not grow with every new input shape
(onnxruntime#11627). docs/DESIGN.md #3 has the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from core.registry import ONNX_FILE, TOKENIZER_FILE

# ONNX metadata key the export sets when a row's logits depend on that row alone.
BATCH_INVARIANT = "selftune.batch_invariant"
# ONNX metadata key of the temperature that calibrates the scores (training/temperature.py).
TEMPERATURE = "selftune.temperature"
# Padded tokens a run may carry, as a share of its real ones; and rows per run. On 64-text
# batches (bench/SERVING.md) 12.5% was fastest with 2 ORT threads and within 1% of
# exact-length groups with 1; 25%, 50% and padding to the longest cost more.
MAX_PADDING = 0.125
MAX_RUN_ROWS = 64


def session_options(threads: int, spin: bool = True) -> ort.SessionOptions:
    """ORT options with an explicit thread budget: BentoML sets none per worker.

    `spin=False` parks idle intra-op threads at once instead of busy-waiting for
    the next run: what lets several workers each hold more threads than their
    share of the cores without burning the others' CPU.
    """
    opts = ort.SessionOptions()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = False
    return opts


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """A fast tokenizer that truncates to `max_length` and never pads (`feeds` pads per run)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    return tokenizer


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def feeds(batch: Sequence[Sequence[int]]) -> dict[str, npt.NDArray[np.int64]]:
    """Model inputs for token id lists, right-padded to the longest and masked."""
    input_ids = np.zeros((len(batch), max(map(len, batch))), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def length_runs(lengths: Sequence[int], max_padding: float, max_rows: int) -> list[list[int]]:
    """Indices grouped into runs of similar length, shortest first.

    A run padded to its longest text carries at most `max_padding` x its real
    tokens in padding, and at most `max_rows` texts.
    """
    runs: list[list[int]] = []
    run: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        # Sorted ascending: lengths[i] is the longest of run + [i].
        padded = lengths[i] * (len(run) + 1)
        if run and (len(run) == max_rows or padded > (real + lengths[i]) * (1 + max_padding)):
            runs.append(run)
            run, real = [], 0
        run.append(i)
        real += lengths[i]
    if run:
        runs.append(run)
    return runs


def run_logits(
    session: ort.InferenceSession, ids: Sequence[Sequence[int]], run: Sequence[int]
) -> npt.NDArray[np.float32]:
    """One ORT run: the logits of the texts `run` indexes in `ids`, padded together."""
    logits: npt.NDArray[np.float32] = session.run(["logits"], feeds([ids[i] for i in run]))[0]
    return logits


def _load_session(model_dir: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(model_dir / ONNX_FILE), sess_options=options, providers=["CPUExecutionProvider"]
    )


@dataclass(frozen=True)
class Scored:
    """A batch's logits, probabilities and tokens (the model ran on exactly those)."""

    logits: npt.NDArray[np.float32]
    probabilities: npt.NDArray[np.float32]
    tokens: int


class SideBySide:
    """Runs shared out to `threads` callers of one one-thread session (`Classifier`)."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        self.session = _load_session(model_dir, session_options(1))
        self._callers = ThreadPoolExecutor(threads, "ort-run")

    def run(
        self, ids: Sequence[Sequence[int]], runs: list[list[int]]
    ) -> list[npt.NDArray[np.float32]]:
        """Each run's logits, in the order of `runs`."""
        return list(self._callers.map(lambda run: run_logits(self.session, ids, run), runs))


class Classifier:
    """A model folder (model.onnx + tokenizer.json) loaded for inference.

    Thread-safe for concurrent `predict_proba` calls: ORT sessions allow
    concurrent `run`, and the tokenizer is read-only after construction.

    With `threads` > 1 a call of several runs shares them out to `threads`
    callers of a one-thread session (`side_by_side`): 64-text batches of tweets ran
    1.57x the rate of one text per run on a 2-thread session, where each sorted run
    on both threads gained 1.15x (docs/DESIGN.md #3): one short run is too small to
    split, two are not. A lone run still takes every thread.
    """

    def __init__(
        self,
        model_dir: Path,
        max_length: int,
        threads: int,
        max_padding: float = MAX_PADDING,
        max_rows: int = MAX_RUN_ROWS,
        spin: bool = True,
    ) -> None:
        self.model_dir = model_dir
        self.session = _load_session(model_dir, session_options(threads, spin))
        self.tokenizer = load_tokenizer(model_dir / TOKENIZER_FILE, max_length)
        marks = self.session.get_modelmeta().custom_metadata_map
        self.batch_invariant = marks.get(BATCH_INVARIANT) == "true"
        self.temperature = float(marks.get(TEMPERATURE, 1.0))
        self.max_padding = max_padding
        self.max_rows = max_rows if self.batch_invariant else 1
        self.side_by_side = SideBySide(model_dir, threads) if threads > 1 else None

    def logits(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Raw logits, one row per text, in input order (export parity checks use these)."""
        return self._run(texts)[0]

    def score(self, texts: Sequence[str]) -> Scored:
        """Calibrated class probabilities (softmax of logits / the file's temperature), one
        row per text, in input order."""
        logits, tokens = self._run(texts)
        return Scored(logits, softmax(logits / self.temperature), tokens)

    def _run(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], int]:
        if not texts:
            raise ValueError("scoring needs at least one text")
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]
        lengths = [len(row) for row in ids]
        runs = length_runs(lengths, self.max_padding, self.max_rows)
        if self.side_by_side is not None and len(runs) > 1:
            # Heaviest first, so the last run handed out is a short one.
            runs.sort(key=lambda run: len(run) * max(lengths[i] for i in run), reverse=True)
            outputs = self.side_by_side.run(ids, runs)
        else:
            outputs = [run_logits(self.session, ids, run) for run in runs]
        logits = np.empty((len(ids), outputs[0].shape[1]), dtype=np.float32)
        for run, output in zip(runs, outputs, strict=True):
            logits[run] = output
        return logits, sum(lengths)

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
