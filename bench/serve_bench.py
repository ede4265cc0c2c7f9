"""Serving benchmark, run by hand: our BentoML service against its limit and its alternative.

    BENTOML_HOME=... python bench/serve_bench.py --model text-classifier

Measures, in one run and interleaved (timings drift on shared machines):

* the limit: the same ONNX model called in-process (`Classifier.score`) at
  batch sizes 1, 8 and 64 — the best of them is what serving could reach;
  measured again right before each load level, and each ratio pairs the two;
* our service (`bentoml serve service.service:TextClassifier`) in each
  `--configs` WORKERS:ORT_THREADS[:nospin][:review][@MODEL][=CHECKOUT] choice:
  single-text requests at concurrency 1, 8 and 64 — texts/s and p50/p95/p99
  latency (a CHECKOUT serves another tree's code, e.g. a `git worktree` of main,
  for an A/B; `review` turns the review queue on, sampling every text);
* the service a user would write first (bench/naive_service.py): BentoML's
  example shape on the same model.onnx, one worker, padded batches;
* cold start to ready with an existing model, and the service's RSS before and
  after a long run of mixed-length texts (ORT arena growth, onnxruntime#11627);
* with `--protocols`, instead of the baseline: the same single texts through
  /predict, the Hugging Face route (`POST /`) and Open Inference Protocol
  infer (JSON tensors), interleaved, each protocol's rate as a ratio to /predict's.

Everything stays on loopback and every load phase is bounded in requests and
seconds. Prints a Markdown table for bench/SERVING.md.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil

from core.runtime import Classifier

ROOT = Path(__file__).resolve().parent.parent
# The shared datasets sit beside the checkout (../shared), as on every dev and CI machine.
DEFAULT_TEXTS = ROOT.parent / "shared" / "datasets" / "tweets-sentiment" / "validation.csv"
CONCURRENCY = (1, 8, 64)
NAIVE = "naive"


@dataclass(frozen=True)
class Config:
    """One WORKERS x ORT_THREADS choice for our service, whether ORT threads spin, which
    model it serves (another name in the same store: e.g. the same weights as the previous
    release exported them), and which checkout's code serves it (this one by default)."""

    workers: int
    threads: int
    spin: bool
    model: str | None
    checkout: Path = ROOT
    review: bool = False

    @classmethod
    def parse(cls, text: str) -> Config:
        """WORKERS:ORT_THREADS[:nospin][:review][@MODEL][=CHECKOUT]"""
        text, _, checkout = text.partition("=")
        text, _, model = text.partition("@")
        workers, threads, *flags = text.split(":")
        root = Path(checkout).resolve() if checkout else ROOT
        return cls(int(workers), int(threads), "nospin" not in flags, model or None, root,
                   "review" in flags)  # fmt: skip

    @property
    def label(self) -> str:
        spin = "" if self.spin else " no spin"
        review = " review" if self.review else ""
        model = f" @{self.model}" if self.model else ""
        checkout = f" ={self.checkout.name}" if self.checkout != ROOT else ""
        return f"ours {self.workers}x{self.threads}{spin}{review}{model}{checkout}"

    def env(self, model: str, state_dir: Path) -> dict[str, str]:
        return {
            "MODEL_NAME": self.model or model,
            "STATE_DIR": str(state_dir),
            "TOKENIZERS_PARALLELISM": "false",
            "WORKERS": str(self.workers),
            "ORT_THREADS": str(self.threads),
            "ORT_SPIN": str(self.spin).lower(),
            "ALLOW_OVERSUBSCRIPTION": "true",
            "REVIEW_QUEUE": str(self.review).lower(),
            "REVIEW_SAMPLE_RATE": "1",
        }


@dataclass(frozen=True)
class Route:
    """Where one text goes, and the body it travels in."""

    path: str
    kind: str  # predict | hf | v2

    def body(self, text: str) -> dict[str, object]:
        if self.kind == "hf":
            return {"inputs": text}
        if self.kind == "v2":
            return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
        return {"texts": [text]}


PREDICT = Route("/predict", "predict")


def protocol_routes(model: str) -> dict[str, Route]:
    return {
        "predict": PREDICT,
        "hf": Route("/", "hf"),
        "v2": Route(f"/v2/models/{model}/infer", "v2"),
    }


@dataclass(frozen=True)
class Load:
    texts_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int


# Run by the checkout's own code: its store migrates the database to its own schema,
# which an older checkout's server must be able to open.
PIN = """
import sys
from store import open_store, versions
state, model, tag = sys.argv[1:]
print(versions.adopt_if_none(open_store(f"sqlite:///{state}/service.db"), model, tag))
"""


def pin_version(model: str, state_dir: Path, checkout: Path) -> str:
    """Make `model`'s newest version the active one in a fresh store under `state_dir`.

    A fresh store otherwise adopts the newest version that is no retrain's output
    (`service.model_holder`), which need not be the file measured in-process and
    by the naive service: a bootstrap's quick fp32 model, say, beside its int8 refit.
    """
    from core import registry

    newest = registry.get(f"{model}:latest")
    tag = str(newest.tag)
    state_dir.mkdir(parents=True, exist_ok=True)
    active = subprocess.run(
        [sys.executable, "-c", PIN, str(state_dir), model, tag],
        cwd=checkout, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if active != tag:
        raise SystemExit(f"{state_dir} already serves {active}, not {tag}: use a fresh state dir")
    return str(newest.version)


@contextmanager
def ours(config: Config, model: str, state_dir: Path) -> Iterator[tuple[str, float, int]]:
    """Our service in `config`, serving `model`'s newest version (checked); as `server`."""
    name = config.model or model
    version = pin_version(name, state_dir, config.checkout)
    command = [sys.executable, "-m", "bentoml", "serve", "service.service:TextClassifier"]
    with server(command, config.env(model, state_dir), "/readyz", config.checkout) as started:
        check_serves(started[0], version)
        yield started


def check_serves(url: str, version: str) -> None:
    """Refuse to measure a server that answers with another model version than asked for."""
    answer = httpx.post(url + PREDICT.path, json=PREDICT.body("hello"), timeout=30).json()
    if answer[0]["model_version"] != version:
        raise SystemExit(f"{url} serves {answer[0]['model_version']}, not {version}")


def read_texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, timeout_s: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


@contextmanager
def server(
    command: list[str], env: dict[str, str], ready_path: str, cwd: Path = ROOT
) -> Iterator[tuple[str, float, int]]:
    """Start a server in `cwd`; yields (url, seconds from spawn to ready, pid)."""
    port = free_port()
    env = {**os.environ, **env, "PORT": str(port)}
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        ready_s = wait_ready(url + ready_path)
        yield url, ready_s, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


async def load(
    url: str,
    texts: list[str],
    concurrency: int,
    requests: int,
    max_s: float,
    route: Route = PREDICT,
) -> Load:
    """`concurrency` clients send one text per request, for `requests` requests or `max_s` s.

    aiohttp, not httpx: the generator shares the 2 cores with the server, and
    httpx's AsyncClient spent ~10 ms of CPU per request at 64 connections here
    against aiohttp's ~0.4 ms (bench/SERVING.md), CPU the server would lose.
    """
    latencies: list[float] = []
    errors = 0
    next_index = 0
    deadline = time.perf_counter() + max_s

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal next_index, errors
        while next_index < requests and time.perf_counter() < deadline:
            text = texts[next_index % len(texts)]
            next_index += 1
            start = time.perf_counter()
            async with http.post(route.path, json=route.body(text)) as response:
                await response.read()
                if response.status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:
        # First-touch costs (connections, shapes) out of the way.
        for text in texts[:8]:
            async with http.post(route.path, json=route.body(text)) as response:
                response.raise_for_status()
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ordered = sorted(latencies) or [float("nan")]

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e3

    return Load(len(latencies) / elapsed, pct(0.50), pct(0.95), pct(0.99), errors)


def load_classifier(model: str, threads: int) -> Classifier:
    """`model`'s newest version in-process, warmed up: the limit serving is measured against."""
    from core import registry

    version = registry.get(f"{model}:latest")
    classifier = Classifier(version.path, version.max_length, threads)
    classifier.score(["warm up"] * 64)
    return classifier


def in_process(classifier: Classifier, texts: list[str], repeats: int = 3) -> dict[int, float]:
    """Texts/s of `Classifier.score` at batch sizes 1, 8, 64 (median of interleaved repeats)."""
    rates: dict[int, list[float]] = {1: [], 8: [], 64: []}
    sample = texts[:512]
    for _ in range(repeats):
        for batch in rates:
            start = time.perf_counter()
            for i in range(0, len(sample), batch):
                classifier.score(sample[i : i + batch])
            rates[batch].append(len(sample) / (time.perf_counter() - start))
    return {batch: statistics.median(r) for batch, r in rates.items()}


def tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


async def mixed_run(url: str, texts: list[str], total: int) -> None:
    """`total` texts in requests of 1-32 texts of every length, 4 clients at a time."""
    rng = random.Random(0)
    pool = [" ".join(rng.sample(texts, rng.randint(1, 6))) for _ in range(total)]
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=60)) as http:
        sem = asyncio.Semaphore(4)

        async def send(chunk: list[str]) -> None:
            async with sem, http.post("/predict", json={"texts": chunk}) as response:
                response.raise_for_status()

        chunks, i = [], 0
        while i < total:
            size = rng.randint(1, 32)
            chunks.append(pool[i : i + size])
            i += size
        await asyncio.gather(*(send(c) for c in chunks))


def fmt(load_: Load) -> str:
    return (
        f"{load_.texts_per_s:.0f} | {load_.p50_ms:.0f} / {load_.p95_ms:.0f} / {load_.p99_ms:.0f}"
        + (f" ({load_.errors} errors)" if load_.errors else "")
    )


def measure_limit(
    classifier: Classifier, texts: list[str], c: int, bests: dict[int, list[float]]
) -> None:
    """The in-process best again, just before a load level: the machine drifts by up to 1.5x
    within minutes, so each ratio pairs a phase with the in-process rate next to it."""
    bests.setdefault(c, []).append(max(in_process(classifier, texts, 1).values()))
    print(f"in-process best before c={c}: {bests[c][-1]:.0f}", flush=True)


def run_protocols(args: argparse.Namespace, texts: list[str], classifier: Classifier) -> None:
    """The three wire shapes against one server, interleaved: what a protocol route costs."""
    routes = protocol_routes(args.model)
    config = Config.parse(args.configs[0])
    results: dict[tuple[str, int], list[Load]] = {}
    bests: dict[int, list[float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="serve-bench-") as state,
        ours(config, args.model, Path(state)) as (url, _, _),
    ):
        for _ in range(args.rounds):
            for c in CONCURRENCY:
                measure_limit(classifier, texts, c, bests)
                for name, route in routes.items():
                    result = asyncio.run(
                        load(url, texts, c, args.requests, args.max_seconds, route)
                    )
                    results.setdefault((name, c), []).append(result)
                    print(f"{name} c={c}: {fmt(result)}", flush=True)
    print(
        "\n| concurrency | route | texts/s (median round) | p50/p95/p99 ms "
        "| vs /predict | vs in-process best (both paired by round, median) |"
    )
    print("|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        predict = results[("predict", c)]
        for name in routes:
            runs = results[(name, c)]
            # Paired by round: each route ran right after /predict, so drift cancels.
            paired = paired_ratio(rates(runs), rates(predict))
            to_best = paired_ratio(rates(runs), bests[c])
            row = f"| {c} | {routes[name].path} | {fmt(median(runs))}"
            print(f"{row} | {paired:.2f} | {to_best:.2f} |")


def rates(runs: list[Load]) -> list[float]:
    return [r.texts_per_s for r in runs]


def paired_ratio(values: list[float], baselines: list[float]) -> float:
    """The median over rounds of value / baseline, each pair measured side by side."""
    return statistics.median(v / b for v, b in zip(values, baselines, strict=True))


def median(runs: list[Load]) -> Load:
    ordered = sorted(runs, key=lambda r: r.texts_per_s)
    return ordered[len(ordered) // 2]


def run(args: argparse.Namespace) -> None:
    texts = read_texts(args.texts)
    cores = os.cpu_count() or 1
    classifier = load_classifier(args.model, cores)
    limit = in_process(classifier, texts)
    best = max(limit.values())
    print(f"in-process texts/s by batch size: { {b: round(r) for b, r in limit.items()} }")
    if args.protocols:
        run_protocols(args, texts, classifier)
        return

    from core import registry

    naive_cmd = [sys.executable, "-m", "bentoml", "serve", "naive_service:Naive"]
    naive_env = {"NAIVE_MODEL_DIR": str(registry.get(f"{args.model}:latest").path)}
    configs = [Config.parse(c) for c in args.configs]
    results: dict[tuple[str, int], list[Load]] = {}
    with ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-bench-")))
        # The first configuration alone first: its cold start is the one reported.
        urls: dict[str, str] = {}
        for i, config in enumerate(configs):
            url, ready_s, pid = stack.enter_context(ours(config, args.model, state / str(i)))
            urls[config.label] = url
            if i == 0:
                first_url, cold_s, first_pid = url, ready_s, pid
        urls[NAIVE] = stack.enter_context(
            server([*naive_cmd, "--working-dir", "bench"], naive_env, "/readyz")
        )[0]
        print(f"cold start to ready: {cold_s:.1f} s")
        bests: dict[int, list[float]] = {}
        for round_ in range(args.rounds):
            for c in CONCURRENCY:
                measure_limit(classifier, texts, c, bests)
                names = list(urls)
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    result = asyncio.run(
                        load(urls[name], texts, c, args.requests, args.max_seconds)
                    )
                    results.setdefault((name, c), []).append(result)
                    print(f"{name} c={c}: {fmt(result)}", flush=True)
        rss_before = tree_rss_mb(first_pid)
        asyncio.run(mixed_run(first_url, texts, args.memory_texts))
        rss_after = tree_rss_mb(first_pid)

    print(
        "\n| concurrency | server | texts/s (median round) | p50/p95/p99 ms "
        "| / in-process best | / naive (both paired by round, median) |"
    )
    print("|---|---|---|---|---|---|")
    for c in CONCURRENCY:
        for name in urls:
            runs = results[(name, c)]
            to_best = paired_ratio(rates(runs), bests[c])
            to_naive = paired_ratio(rates(runs), rates(results[(NAIVE, c)]))
            print(f"| {c} | {name} | {fmt(median(runs))} | {to_best:.2f} | {to_naive:.2f} |")
    print(
        f"\nin-process best at the start: {best:.0f} texts/s (batch sizes: "
        + ", ".join(f"{b}: {r:.0f}" for b, r in limit.items())
        + f"; {cores} ORT threads)"
    )
    print(f"cold start to ready ({configs[0].label}): {cold_s:.1f} s")
    print(
        f"service RSS ({configs[0].label}): {rss_before:.0f} MB before, {rss_after:.0f} MB after "
        f"{args.memory_texts} mixed-length texts"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME", "text-classifier"))
    parser.add_argument("--texts", type=Path, default=DEFAULT_TEXTS)
    parser.add_argument("--requests", type=int, default=600, help="per load phase, at most")
    parser.add_argument("--max-seconds", type=float, default=15, help="per load phase, at most")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory-texts", type=int, default=4000)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["2:1"],
        help="our WORKERS:ORT_THREADS[:nospin][:review][@MODEL][=CHECKOUT] choices; the first "
        "one's cold "
        "start and memory are reported, and --protocols serves it",
    )
    parser.add_argument(
        "--protocols", action="store_true", help="compare /predict, POST / and V2 infer instead"
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
