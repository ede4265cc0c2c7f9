"""Do the drift signals tell shifted traffic from ordinary traffic? A real server, run by hand.

    BENTOML_HOME=... python bench/drift_check.py --model bench-retrain

For the version bench/retrain_bench.py sets up (trained on the tweets outside
the held-out topics of bench/topics.py, so its reference profile describes
them), served by one worker (one window judges every text). Each phase sends
450 texts (more than the two 200-prediction windows a retrain on drift needs
flagged, where a topic has that many) as /predict requests of 8 and reads GET
/monitoring after the next poll:

* `ordinary`: a random sample of `rest_eval` (the same distribution as the
  version's evaluation split, never trained on), before each shift and at the
  end: every flag raised there is a false alarm;
* `negative`: only tweets labeled negative (the label mix moves);
* one phase per held-out topic (the model never saw it), then per screening
  topic (it did, among everything else), from texts it was not trained on.

Then every look: 3,000 ordinary texts with GET /monitoring read after each
request (each a look at a window, as every poll is), counting the looks that
flag drift and those that confirm it (what RETRAIN_ON_DRIFT acts on); and per
shift, after 400 ordinary texts, how many of its texts pass before the first
flag and before confirmation.
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve_bench import pin_version, server  # noqa: E402
from bench.serve_inprocess import cpu_header  # noqa: E402
from bench.topics import SCREEN_TOPICS, load_shifts, topic_of  # noqa: E402

PHASE_TEXTS = 450
TOKEN = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def stream(http: httpx.Client, texts: list[str]) -> list[dict[str, Any]]:
    """Send `texts` 8 at a time; the worker's view (GET /monitoring) after each request."""
    views = []
    for i in range(0, len(texts), 8):
        http.post("/predict", json={"texts": texts[i : i + 8]}).raise_for_status()
        views.append(monitoring(http)["worker"])
    return views


def phase(http: httpx.Client, texts: list[str]) -> dict[str, Any]:
    """Send `texts`, wait for the worker's next poll (the merged gauges), return GET /monitoring."""
    stream(http, texts)
    time.sleep(2.5)  # MODEL_POLL_SECONDS is 2
    return monitoring(http)


def monitoring(http: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = http.get("/monitoring", headers=AUTH).json()
    return body


def flagged(view: dict[str, Any]) -> bool:
    return any(view["drift"].values())


def confirmed(view: dict[str, Any]) -> bool:
    return bool(view["drift_confirmed"])


def first(views: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> str:
    """Texts sent before the first view that passes `test` ("-": none)."""
    hit = next((i for i, v in enumerate(views) if test(v)), None)
    return "-" if hit is None else str(8 * (hit + 1))


def looks(
    http: httpx.Client, rng: random.Random, ordinary: list[str], shifted: dict[str, list[str]]
) -> None:
    views = stream(http, rng.sample(ordinary, 3000))
    flags = [flagged(v) for v in views]
    runs = sum(on and not before for before, on in zip([False, *flags], flags, strict=False))
    by_signal = {name: sum(v["drift"][name] for v in views) for name in views[0]["drift"]}
    print(f"\nordinary traffic, {len(views)} looks (one per request of 8): {sum(flags)} "
          f"flagged drift ({runs} runs of looks; by signal {by_signal}), "
          f"{sum(map(confirmed, views))} confirmed it\n")  # fmt: skip
    print("| shift | texts sent before the first flag | before confirmation |")
    print("|---|---|---|")
    for name, texts in shifted.items():
        stream(http, rng.sample(ordinary, 400))
        views = stream(http, rng.sample(texts, min(PHASE_TEXTS, len(texts))))
        print(f"| {name} | {first(views, flagged)} | {first(views, confirmed)} |", flush=True)


def row(name: str, body: dict[str, Any]) -> tuple[str, bool]:
    merged, worker = body["merged"], body["worker"]
    flags = [signal for signal, on in worker["drift"].items() if on]
    line = (
        f"| {name} | {merged['drift_label_distance']:.3f} | {merged['drift_label_pvalue']:.1e} "
        f"| {merged['drift_confidence_statistic']:.3f} | {merged['drift_confidence_pvalue']:.1e} "
        f"| {worker['label_share'].get('negative', 0):.2f} "
        f"| {merged['monitor_estimated_accuracy']:.3f} | {', '.join(flags) or '-'} "
        f"| {'yes' if worker['drift_confirmed'] else '-'} |"
    )
    return line, bool(flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="text-classifier")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shifts = load_shifts()
    ordinary = [t for t, _ in shifts.rest_eval]
    shifted = {"negative": [t for t, y in shifts.rest_eval if y == "negative"]}
    shifted |= {
        name: [t for t, _ in topic.eval + topic.pool] for name, topic in shifts.topics.items()
    }
    shifted |= {
        name: [t for t in ordinary if topic_of(t, SCREEN_TOPICS) == name] for name in SCREEN_TOPICS
    }
    env = {"MODEL_NAME": args.model, "WORKERS": "1", "ADMIN_TOKEN": TOKEN,
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    with tempfile.TemporaryDirectory() as state:
        env["STATE_DIR"] = state
        version = pin_version(args.model, Path(state), ROOT)
        command = [sys.executable, "-m", "bentoml", "serve", "service.service:TextClassifier"]
        with (
            server(command, env, "/readyz") as (url, _, _),
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            print(f"{cpu_header()}\nmodel {args.model}:{version}, {PHASE_TEXTS} texts a phase\n")
            print("| phase | label JS distance | label p | confidence KS | confidence p "
                  "| negative share | estimated accuracy | drift | confirmed |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|")
            alarms = detected = 0
            for name, texts in shifted.items():
                line, flagged = row("ordinary", phase(http, rng.sample(ordinary, PHASE_TEXTS)))
                print(line, flush=True)
                alarms += flagged
                line, flagged = row(
                    name, phase(http, rng.sample(texts, min(PHASE_TEXTS, len(texts))))
                )
                print(line, flush=True)
                detected += flagged
            line, flagged = row("ordinary", phase(http, rng.sample(ordinary, PHASE_TEXTS)))
            print(line, flush=True)
            alarms += flagged
            print(f"\nordinary phases with a flag (false alarms): {alarms} of {len(shifted) + 1}; "
                  f"shifted phases flagged: {detected} of {len(shifted)}")  # fmt: skip
            looks(http, rng, ordinary, shifted)


if __name__ == "__main__":
    main()
