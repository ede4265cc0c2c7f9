"""Helpers of bench/retrain_bench.py: the CPU, the predict load, and process hygiene.

Process hygiene: a benchmark stopped with SIGTERM (or Ctrl-C) must take its `bentoml serve` and
every retrain that server started with it: a leftover server that shares the
state directory with the next run spoils that run. And before a run starts, no
stray server or retrain from an earlier one may still be using the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

# A serving process of this project, or the retrain process one of its workers starts.
STRAY = re.compile(r"^\S*python[\d.]*\s.*(bentoml|-m retrain\b)")


def cpu_info() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
    model = fields.get("Model name", "?").strip()
    return {"model": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in wanted}}


class Load:
    """`clients` closed-loop clients, one text per /predict request, until the block ends.

    aiohttp in a thread of its own: it costs the shared cores far less CPU per request
    than httpx (bench/SERVING.md). With 0 clients it sends nothing."""

    def __init__(self, url: str, texts: list[str], clients: int) -> None:
        self.url, self.texts, self.clients = url, texts, clients
        self.latencies: list[float] = []
        self.started: list[float] = []  # monotonic start of each latency's request
        self.failures: Counter[str] = Counter()  # by status code or exception
        self.first_seen: dict[str, float] = {}  # model version -> monotonic time of first answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    async def _client(self, http: aiohttp.ClientSession, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                async with http.post("/predict", json={"texts": [rng.choice(self.texts)]}) as r:
                    body = await r.json() if r.status == 200 else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures[type(exc).__name__] += 1
                continue
            if body is None:
                self.failures[str(r.status)] += 1
                continue
            now = time.monotonic()
            self.latencies.append(now - start)
            self.started.append(start)
            self.first_seen.setdefault(body[0]["model_version"], now)

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(limit=max(1, self.clients))
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(self.url, connector=connector, timeout=timeout) as http:
            await asyncio.gather(*(self._client(http, i) for i in range(self.clients)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        failed = sum(self.failures.values())
        return {"ok": len(self.latencies), "failed": failed, "failures": dict(self.failures),
                "p50_ms": percentile_ms(self.latencies, 0.50),
                "p99_ms": percentile_ms(self.latencies, 0.99),
                "p99_by_5s": self.p99_by(5.0)}  # fmt: skip

    def p99_by(self, seconds: float) -> list[float | None]:
        """p99 ms of the requests started in each `seconds` window: where a tail comes from."""
        if not self.started:
            return []
        first = min(self.started)
        windows: dict[int, list[float]] = {}
        for start, latency in zip(self.started, self.latencies, strict=True):
            windows.setdefault(int((start - first) // seconds), []).append(latency)
        return [percentile_ms(windows.get(i, []), 0.99) for i in range(max(windows) + 1)]


def percentile_ms(seconds: list[float], p: float) -> float | None:
    """The `p` quantile (nearest rank) of latencies in seconds, in ms; None for none."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e3, 1)


def fit_details(bentoml_home: Path, tag: str) -> dict[str, Any]:
    """The candidate's own fit phases and training speed, from its metrics.json."""
    name, version = tag.split(":")
    path = bentoml_home / "models" / name / version / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    training = metrics.get("training", {})
    keep = ("steps", "best_step", "samples_per_s", "train_seconds", "bf16")
    return {"phases": metrics.get("phases", {}), **{k: training.get(k) for k in keep}}


def interrupt_on_sigterm() -> None:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt, so `finally` blocks stop the servers.

    Python's default for SIGTERM ends the process at once, without unwinding."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        # One interrupt is enough: cleanup itself must not be interrupted again.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _processes() -> list[tuple[int, str, str]]:
    """(pid, STATE_DIR or "?", command line) of every process we may read, but this one."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        pid = int(entry.name)
        found.append((pid, _environ(pid).get("STATE_DIR", "?"), cmd.strip()[:160]))
    return found


def strays() -> list[tuple[int, str, str]]:
    """(pid, STATE_DIR, command line) of every live server or retrain process of this project."""
    return [p for p in _processes() if STRAY.search(p[2])]


def _ours(state_dir: Path) -> list[int]:
    """Pids of the live processes using `state_dir` (our server, its workers, their retrains)."""
    want = str(state_dir.resolve())
    return [pid for pid, sd, _ in _processes() if sd != "?" and str(Path(sd).resolve()) == want]


def kill_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_tree(proc: subprocess.Popen[bytes] | None, state_dir: Path, grace_s: float = 30) -> None:
    """SIGTERM the server's process group, SIGKILL it after `grace_s`, then SIGKILL any
    process still using `state_dir` (a retrain in a group of its own)."""
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    if proc is not None:
        # The group may outlive its leader: workers and retrains that were still ending.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (left := _ours(state_dir)) and time.monotonic() < deadline:
        kill_pids(left, signal.SIGKILL)
        time.sleep(0.2)


def ensure_no_strays(state_dir: Path, allow_others: bool) -> list[str]:
    """Before a run: kill leftovers of an earlier benchmark on `state_dir` (ours, by pid);
    refuse to start while another server or retrain runs, unless `allow_others` (then its
    lines are returned, to be recorded with the results)."""
    if ours := _ours(state_dir):
        print(f"killing leftovers of an earlier run on {state_dir}: pids {ours}", flush=True)
        stop_tree(None, state_dir)
    others = [f"{pid} (STATE_DIR {sd}): {cmd}" for pid, sd, cmd in strays()]
    if others and not allow_others:
        raise SystemExit(
            "other bentoml serve / retrain processes are running; they would share the CPU "
            "(pass --allow-strays to run anyway):\n  " + "\n  ".join(others)
        )
    return others
