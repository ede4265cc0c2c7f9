"""Retrain benchmark: job wall time, predict latency idle vs during a retrain, swap time.

Run by hand (~12 min on 2 cores); the write-up is bench/RETRAIN.md.

One real `bentoml serve` (the default: one single-threaded worker per core;
`--workers` to change it) of a MiniLM model, with local retraining capped at
1 thread and niced (the defaults): on 2 cores, the retrain competes with both
workers for the machine. For each size N, N new tweets from
tweets-sentiment/train.csv go in through POST /examples and a retrain is
started (it trains on everything stored: the seed data and earlier sizes too);
we time the job, and a closed-loop load generator (CONCURRENCY clients, single-text
requests) measures predict latency before (idle) and during the job. After a
promotion we time how long until every request is answered by the new version.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "tweets-sentiment" / "train.csv"
TOKEN = "bench-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONCURRENCY = 4


def rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    with DATA.open() as f:
        data = [{"text": r["text"], "label": r["label"]} for r in csv.DictReader(f)]
    return data[offset : offset + n]


class Load:
    """Closed-loop single-text predict clients, collecting latencies until stopped."""

    def __init__(self, url: str, texts: list[str]) -> None:
        self.url, self.texts = url, texts
        self.latencies: list[float] = []
        self.errors = 0
        self.versions: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CONCURRENCY)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                r = http.post("/predict", json={"texts": [rng.choice(self.texts)]})
                self.latencies.append(time.perf_counter() - started)
                if r.status_code != 200:
                    self.errors += 1
                else:
                    self.versions.append((time.time(), r.json()[0]["model_version"]))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        q = statistics.quantiles(lat, n=100)
        return {
            "requests": len(lat),
            "errors": self.errors,
            "p50_ms": q[49] * 1000,
            "p99_ms": q[98] * 1000,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="serving workers, 1 thread each"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="retrain-bench-"))
    env = os.environ | {
        "BENTOML_HOME": str(home / "bentoml"),
        "STATE_DIR": str(home / "state"),
        "ADMIN_TOKEN": TOKEN,
        "MODEL_NAME": "bench-retrain",
        "PORT": "3077",
        "WORKERS": str(args.workers),
        "ORT_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    seed_csv = home / "seed.csv"
    with seed_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows((r["text"], r["label"]) for r in rows(1000, offset=20000))
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "fit",
            "--data",
            str(seed_csv),
            "--name",
            "bench-retrain",
            "--epochs",
            "1",
            "--split",
            "hash",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    print("first version:", fit.stdout.strip().splitlines()[-1], flush=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service.service:TextClassifier"],
        cwd=ROOT,
        env=env,
        stdout=(home / "serve.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    results: dict[str, Any] = {"workers": args.workers}
    try:
        url = "http://127.0.0.1:3077"
        for _ in range(120):
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        http = httpx.Client(base_url=url, timeout=60)
        texts = [r["text"] for r in rows(500, offset=25000)]
        offset = 0
        seed = rows(1000, offset=20000)
        http.post("/examples", headers=AUTH, json={"examples": seed, "source": "seed"})
        for size in args.sizes:
            with Load(url, texts) as idle:
                time.sleep(args.idle_seconds)
            new = rows(size, offset=offset)
            offset += size
            total = http.post(
                "/examples", headers=AUTH, json={"examples": new, "source": "bench"}
            ).json()["total"]
            started = time.time()
            job_id = http.post("/retrain", headers=AUTH, json={}).json()["job_id"]
            with Load(url, texts) as busy:
                while (job := http.get(f"/jobs/{job_id}", headers=AUTH).json())["state"] in (
                    "queued",
                    "running",
                ):
                    time.sleep(1)
                finished = time.time()
                promoted = (
                    job["candidate_version"].split(":")[1] if job["state"] == "succeeded" else None
                )
                while promoted and not any(v == promoted for _, v in busy.versions[-CONCURRENCY:]):
                    time.sleep(0.05)
                time.sleep(2)
            first_new = min((t for t, v in busy.versions if v == promoted), default=None)
            last_old = max(
                (t for t, v in busy.versions if v != promoted and t > finished), default=None
            )
            results[str(size)] = {
                "job_state": job["state"],
                "decision": job["decision"],
                "job_wall_s": finished - started,
                "new_examples": size,
                "examples_in_store": total,
                "idle": idle.summary(),
                "during_retrain": busy.summary(),
                "p99_ratio": busy.summary()["p99_ms"] / idle.summary()["p99_ms"],
                "promotion_to_first_new_s": (first_new - finished) if first_new else None,
                "promotion_to_last_old_s": (last_old - finished) if last_old else None,
            }
            print(size, json.dumps(results[str(size)]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrain_bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
