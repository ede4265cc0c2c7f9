"""What drift monitoring and the review queue add to a worker, in process, run by hand.

    BENTOML_HOME=... python bench/monitor_cost.py --model bench-retrain

The end-to-end A/B is bench/serve_bench.py (`--configs 2:1 2:1:review
2:1=OLD_CHECKOUT`), whose throughput noise (5-10%) is larger than what it looks
for; this isolates the work itself, interleaved with the scoring it rides on:

* per batch, on the model thread: the window append (`PredictionWindow.add`)
  and, with REVIEW_QUEUE on at sample rate 1, the review sampler
  (`ReviewSampler.observe`), against `Classifier.score` of the same batch;
* per poll (every MODEL_POLL_SECONDS), off the predict path: computing and
  publishing the signals over a full window (`Monitor.publish`), as a share
  of one core.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve_inprocess import cpu_header  # noqa: E402
from core import registry  # noqa: E402
from core.runtime import Classifier  # noqa: E402
from service.metrics import PredictionWindow  # noqa: E402
from service.model_holder import LoadedModel  # noqa: E402
from service.monitoring import Monitor  # noqa: E402
from service.review import ReviewSampler  # noqa: E402
from service.settings import Settings  # noqa: E402

Probabilities = npt.NDArray[np.float32]
TEXTS = ROOT.parent / "shared" / "datasets" / "tweets-sentiment" / "validation.csv"


def median_time(fn: Callable[[int], object], runs: int) -> float:
    """Median seconds of `fn(0)`, `fn(1)`, ... `fn(runs - 1)`."""
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="text-classifier")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    version = registry.latest(args.model)
    if version is None:
        raise SystemExit(f"no version of {args.model!r} in {registry.store_dir()}")
    with TEXTS.open() as f:
        texts = [row["text"] for row in csv.DictReader(f)][:2000]
    settings = Settings(review_queue=True, review_sample_rate=1.0, workers=1, ort_threads=1)
    classifier = Classifier(version.path, version.max_length, 1)
    window = PredictionWindow(settings.monitor_window)
    monitor = Monitor(settings, window)
    monitor.swapped(LoadedModel.of(version, classifier), None)
    review = ReviewSampler(settings, seed=0)
    labels = list(version.labels)
    print(f"{cpu_header()}; model {version.tag} ({version.metadata.get('precision')})")
    print("| batch | score ms | window append us | review sample us | both, share of score |")
    print("| --- | --- | --- | --- | --- |")
    for size in (1, 8, 64):
        score, append, sample = [], [], []
        for r in range(args.rounds):
            batch = texts[r * size : (r + 1) * size] or texts[:size]
            score.append(median_time(lambda _, b=batch: classifier.score(b), 20))
            p = classifier.score(batch).probabilities
            append.append(median_time(lambda _, p=p: window.add(version.version, p), 200))
            # Texts the sampler has not seen, as served traffic mostly is.
            fresh = [[f"{t} #{r}.{i}" for t in batch] for i in range(200)]

            def observe(i: int, p: Probabilities = p, fresh: list[list[str]] = fresh) -> None:
                review.observe(fresh[i], p, labels, version.version)

            sample.append(median_time(observe, 200))
        s, a, v = (statistics.median(x) for x in (score, append, sample))
        print(f"| {size} | {s * 1e3:.2f} | {a * 1e6:.1f} | {v * 1e6:.1f} | {(a + v) / s:.2%} |")
    for text in texts[: settings.monitor_window]:
        window.add(version.version, classifier.score([text]).probabilities)
    publish = median_time(lambda _: monitor.publish(), 50)
    share = publish / settings.model_poll_seconds
    print(f"signals over a full window ({monitor.signals().predictions} predictions): "
          f"{publish * 1e3:.2f} ms per poll, {share:.3%} of a core")  # fmt: skip


if __name__ == "__main__":
    main()
