"""In-process limit of one model: precision x batching policy, exactness, speed and macro-F1.

    python bench/serve_inprocess.py --version /path/to/version-folder

From the version's `hf/` folder it exports fp32 ONNX as training does now
(fused) and today's static int8 (`training.export.quantize_int8`, calibrated
on training texts), and compares them with the previous release's dynamic int8
(no batch-invariance mark, so `Classifier` runs it one text per run, as served).
The dynamic file is the version's own model.onnx
(or --previous): the previous release's export, unfused, as it was served.
Each (file, policy) scores the same held-out texts cut into 64-text batches in
arrival order (what a BentoML batch holds at 64 clients); every batch is timed
for every pair in rotating order, so drift on a shared machine hits all alike.
With more than one thread, `Classifier` runs a batch's runs side by side (one per
thread); two "runs in turn" rows keep the runtime before that (each run on every
thread, one after another): the previous release's dynamic file one per run,
which every ratio is to, and the default policy on the static file.
Prints ratios to that previous-release row, the largest
logit change against the file's own one-per-run answers, and macro-F1.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "datasets" / "tweets-sentiment"
BATCH = 64
# (label, max_padding, max_rows): how Classifier cuts a batch into runs.
POLICIES = {
    "one per run": (0.0, 1),
    "exact-length groups": (0.0, BATCH),
    "sorted, ≤ 12.5% padding": (0.125, BATCH),
    "sorted, ≤ 25% padding": (0.25, BATCH),
    "sorted, ≤ 50% padding": (0.5, BATCH),
    "padded to the longest": (1e9, BATCH),
}
DEFAULT = "sorted, ≤ 12.5% padding"  # core.runtime's MAX_PADDING
PREVIOUS = "dynamic"


def cpu_header() -> str:
    info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    pairs = (line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in pairs}
    model = f"{fields['model name']}, family {fields['cpu family']} model {fields['model']}"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")
    flags = [f for f in fields.get("flags", "").split() if f in wanted]
    return f"CPU: {model}; flags: {' '.join(flags)}"


def read(path: Path) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def make_files(
    version: Path, previous: Path, out: Path, calibration: list[str], max_length: int
) -> None:
    """fp32/, dynamic/ and static/ folders, each with model.onnx and tokenizer.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.export import quantize_int8, write_onnx

    folders = {name: out / name for name in ("fp32", "dynamic", "static")}
    for folder in folders.values():
        folder.mkdir()
    hf = version / "hf"
    write_onnx(
        AutoModelForSequenceClassification.from_pretrained(hf),
        AutoTokenizer.from_pretrained(hf),
        folders["fp32"],
    )
    for name in ("dynamic", "static"):
        (folders[name] / "tokenizer.json").write_bytes(
            (folders["fp32"] / "tokenizer.json").read_bytes()
        )
    (folders["dynamic"] / "model.onnx").write_bytes(previous.read_bytes())
    start = time.perf_counter()
    quantize_int8(
        folders["fp32"] / "model.onnx", folders["static"] / "model.onnx", calibration, max_length
    )
    seconds = time.perf_counter() - start
    print(f"static quantization, {len(calibration)} calibration texts: {seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=Path, required=True, help="a version folder with hf/")
    parser.add_argument(
        "--previous",
        type=Path,
        help="the previous release's dynamic int8 model.onnx of that version "
        "(default: the version's own, if the previous release made it)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=256)
    args = parser.parse_args()

    from sklearn.metrics import f1_score

    from core.runtime import Classifier

    metadata = json.loads((args.version / "metadata.json").read_text())
    max_length, labels = int(metadata["max_length"]), metadata["labels"]
    held_texts, held_labels = read(DATA / "validation.csv")
    train_texts, _ = read(DATA / "train.csv")
    calibration = random.Random(0).sample(train_texts, args.calibration)
    texts = held_texts[: args.texts]
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    print(cpu_header())
    with tempfile.TemporaryDirectory() as tmp:
        previous = args.previous or args.version / "model.onnx"
        if Classifier(previous.parent, max_length, 1).batch_invariant:
            parser.error(f"{previous} is not the previous release's dynamic int8; pass --previous")
        make_files(args.version, previous, Path(tmp), calibration, max_length)
        pairs: dict[tuple[str, str], Classifier] = {}
        for precision in (PREVIOUS, "static", "fp32"):
            for policy, (padding, rows) in POLICIES.items():
                if precision == PREVIOUS and rows > 1:
                    continue  # not batch-invariant: Classifier runs it one per run anyway
                pairs[(precision, policy)] = Classifier(
                    Path(tmp) / precision, max_length, args.threads, padding, rows
                )
        # The runtime before side-by-side runs: each run on every thread, one after another.
        # The previous release's row (the base) and today's default policy that way.
        for precision, policy in ((PREVIOUS, "one per run"), ("static", DEFAULT)):
            padding, rows = POLICIES[policy]
            in_turn = Classifier(Path(tmp) / precision, max_length, args.threads, padding, rows)
            in_turn.side_by_side = None
            pairs[(precision, f"{policy}, runs in turn")] = in_turn
        for classifier in pairs.values():
            classifier.score(texts[:BATCH])  # first-touch costs out of the way
        singles = {p: pairs[(p, "one per run")] for p in (PREVIOUS, "static", "fp32")}
        seconds: dict[tuple[str, str], list[float]] = {k: [] for k in pairs}
        order = list(pairs)
        for round_ in range(args.rounds):
            spent = dict.fromkeys(pairs, 0.0)
            for b, batch in enumerate(batches):
                rotation = order[(b + round_) % len(order) :] + order[: (b + round_) % len(order)]
                for key in rotation:
                    start = time.perf_counter()
                    pairs[key].score(batch)
                    spent[key] += time.perf_counter() - start
            for key, s in spent.items():
                seconds[key].append(len(texts) / s)
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{k[0]}/{k[1]} {len(texts) / s:.0f}" for k, s in spent.items()),
                flush=True,
            )

        def largest_change(key: tuple[str, str]) -> tuple[float, int]:
            alone = singles[key[0]].logits(texts)  # side by side or not: the same bits
            together = np.concatenate([pairs[key].logits(b) for b in batches])
            flips = int((alone.argmax(1) != together.argmax(1)).sum())
            return float(np.abs(alone - together).max()), flips

        def macro_f1(classifier: Classifier) -> float:
            predicted = [labels[i] for i in classifier.predict_indices(held_texts)]
            return float(f1_score(held_labels, predicted, average="macro"))

        f1 = {p: macro_f1(c) for p, c in singles.items()}
        base = statistics.median(seconds[(PREVIOUS, "one per run, runs in turn")])
        print(
            f"\n{cpu_header()}; {args.threads} ORT threads; {len(texts)} validation tweets in "
            f"{BATCH}-text batches; {args.rounds} rounds, each batch timed for every row in turn\n"
        )
        print(
            "| model | policy | texts/s per round | median | × previous release "
            "| max abs Δlogit vs one per run | label flips |"
        )
        print("|---|---|---|---|---|---|---|")
        for key, rates in seconds.items():
            change, flips = largest_change(key)
            med = statistics.median(rates)
            print(
                f"| {key[0]} | {key[1]} | {' / '.join(f'{r:.0f}' for r in rates)} | {med:.0f} "
                f"| {med / base:.2f} | {change:.3g} | {flips} |"
            )
        print(
            f"\nmacro-F1 on {len(held_texts)} validation tweets: "
            + ", ".join(f"{p} {v:.4f}" for p, v in f1.items())
            + f"; static − fp32 = {100 * (f1['static'] - f1['fp32']):+.2f} points"
        )


if __name__ == "__main__":
    main()
