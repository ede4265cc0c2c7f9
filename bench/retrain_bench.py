"""Retrain benchmark: do new labels on a topic the model never saw reach serving, on any
topic, and do wrong labels never?

    .venv/bin/python bench/retrain_bench.py --home /tmp/retrain-bench   # the whole matrix

Topics and held-out sets: bench/topics.py (every topic is out of the store at
once). On one loopback `bentoml serve` with HOME's model store and database,
the setup version is a `training fit` on a small slice and then a refit job
on the store (`--setup-epochs`, through the job queue and the gate), made once
per HOME. Then, per topic, N, seed and mode: the setup version is activated,
the topic's rows of the previous run deleted, N topic rows posted (source
"topic", the first N of a shuffle by the seed), and `POST /retrain
{"mode", "seed"}` run to its decision. `--wrong N` adds, per topic, seed and
mode, a batch of N topic rows with wrong labels.

Per run: the decision and its gate record, seconds from the POST to the
decision and to the new version answering /predict, and the macro-F1 of the
candidate (promoted or not) and of the setup version on the bench's own
held-out topic and rest texts, scored in this process with the serving code
(core.runtime). A false rejection is a rejected candidate better than the
setup on the topic and within GATE_MARGIN of it on the rest; a false promotion
is a promoted wrong-labels batch. `--clients` runs closed-loop /predict
clients during each job (predict p50/p99 idle and during); `--envs`
interleaves server settings (the server restarts for each). SIGTERM or Ctrl-C
stops the server's whole process tree. Prints each run and the cell table;
raw numbers in bench/out/retrain_bench.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from retrain_helpers import (
    Load,
    cpu_info,
    ensure_no_strays,
    fit_details,
    interrupt_on_sigterm,
    stop_tree,
)
from retrain_report import acceptance, cells, line
from sklearn.metrics import f1_score
from topics import TOPICS, Row, Shifts, load_shifts, wrong_labels

from core.runtime import Classifier
from core.text import EVAL_FRACTION, in_eval_split
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TOKEN = "bench-admin-token-0123456789"
MODEL = "bench-retrain"
CHUNK = 5000  # examples per POST /examples
FIRST_FIT = (200, 100)  # the first `training fit`: training texts, evaluation texts
FINAL = ("succeeded", "rejected", "failed")
RETRAIN_ENV = (
    "RETRAIN_THREADS", "REPLAY_RATIO", "REPLAY_MIN", "REPLAY_MAX", "INCREMENTAL_EPOCHS",
    "INCREMENTAL_LR", "REFIT_EPOCHS", "GATE_MARGIN", "GATE_REFIT_MARGIN", "GATE_MIN_EVAL",
    "GATE_MIN_NEW", "GATE_LABEL_NOISE", "WORKERS",
)  # fmt: skip


class Service:
    """One `bentoml serve` of MODEL on loopback, with its own model store and database."""

    def __init__(self, home: Path, allow_strays: bool = False) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.home, self.url = home, f"http://127.0.0.1:{port}"
        self.models = home / "bentoml" / "models" / MODEL
        self.env = os.environ | {
            "BENTOML_HOME": str(home / "bentoml"), "STATE_DIR": str(home / "state"),
            "MODEL_NAME": MODEL, "ADMIN_TOKEN": TOKEN, "HOST": "127.0.0.1", "PORT": str(port),
            "MAX_EXAMPLES_PER_REQUEST": str(CHUNK), "MAX_ADMIN_BODY_BYTES": str(64 * 2**20),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "BENTOML_DO_NOT_TRACK": "true",
        }  # fmt: skip
        auth = {"Authorization": f"Bearer {TOKEN}"}
        self.http = httpx.Client(base_url=self.url, headers=auth, timeout=120)
        self.proc: subprocess.Popen[bytes] | None = None
        self.allow_strays = allow_strays
        self.others: list[str] = []  # other servers/retrains alive at a start (--allow-strays)

    def set_env(self, env: dict[str, str | None]) -> None:
        """Restart with these server variables if any differs (None: the environment's)."""
        wanted = {k: v if v is not None else os.environ.get(k) for k, v in env.items()}
        if all(self.env.get(k) == v for k, v in wanted.items()):
            return
        for k, v in wanted.items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = v
        if self.proc is not None:
            self.stop()
            self.start()

    def start(self) -> None:
        self.others += ensure_no_strays(self.home / "state", self.allow_strays)
        command = [sys.executable, "-m", "bentoml", "serve", "service.service:TextClassifier"]
        with (self.home / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.http.get("/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready; see {self.home / 'serve.log'}")

    def stop(self) -> None:
        """The server's whole tree: its workers and any retrain they run (retrain_helpers)."""
        stop_tree(self.proc, self.home / "state")
        self.proc = None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:2000]}")
        return r.json()

    def post_examples(self, rows: list[Row], source: str) -> None:
        for i in range(0, len(rows), CHUNK):
            examples = [{"text": t, "label": label} for t, label in rows[i : i + CHUNK]]
            self.call("POST", "/examples", json={"examples": examples, "source": source,
                                                 "on_conflict": "relabel"})  # fmt: skip

    def run_job(self, body: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], float]:
        """Queue a retrain and wait for its final state, or state "timeout" after `timeout_s`;
        returns (job, seconds from the POST)."""
        start = time.monotonic()
        job_id = self.call("POST", "/retrain", json=body)["job_id"]
        while (job := self.call("GET", f"/jobs/{job_id}"))["state"] not in FINAL:
            if time.monotonic() - start > timeout_s:
                return job | {"state": "timeout"}, time.monotonic() - start
            time.sleep(0.25)
        return job, time.monotonic() - start

    def served(self, version: str, timeout_s: float = 60) -> None:
        """Return once /predict answers with `version`."""
        deadline = time.monotonic() + timeout_s
        body = {"texts": ["waiting for the new version"]}
        while self.call("POST", "/predict", json=body)[0]["model_version"] != version:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{version} not served within {timeout_s} s")
            time.sleep(0.05)

    def setup(self, shifts: Shifts, epochs: float, timeout_s: float) -> dict[str, Any]:
        """Start serving the setup version, made here unless HOME has it."""
        marker = self.home / "setup.json"
        key = {"store": len(shifts.store), "epochs": epochs, "topics": sorted(shifts.topics)}
        if marker.exists() and (saved := json.loads(marker.read_text()))["key"] == key:
            self.start()
            return dict(saved["setup"])
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        # The first version is a plain fit on a small slice: a retrain inherits its recipe.
        held = [in_eval_split(t, EVAL_FRACTION) for t, _ in shifts.store]
        slices = {"train": [r for r, h in zip(shifts.store, held, strict=True) if not h],
                  "eval": [r for r, h in zip(shifts.store, held, strict=True) if h]}  # fmt: skip
        for (name, rows), size in zip(slices.items(), FIRST_FIT, strict=True):
            with (self.home / f"first-{name}.csv").open("w", encoding="utf-8", newline="") as f:
                csv.writer(f).writerows([("text", "label"), *rows[:size]])
        with (self.home / "first-fit.log").open("wb") as log:
            subprocess.run(
                [sys.executable, "-m", "training", "fit", "--name", MODEL, "--epochs", "1",
                 "--data", str(self.home / "first-train.csv"),
                 "--eval-data", str(self.home / "first-eval.csv"),
                 "--threads", os.environ.get("RETRAIN_THREADS", "1")],
                cwd=ROOT, env=self.env, check=True, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.start()
        self.post_examples(shifts.store, "base")
        job, wall = self.run_job({"mode": "refit", "epochs": epochs}, timeout_s)
        if job["state"] != "succeeded":
            raise RuntimeError(f"setup refit not promoted: {job}")
        setup = {"version": job["candidate_version"], "wall_s": round(wall, 1), "job": job}
        marker.write_text(json.dumps({"key": key, "setup": setup}, default=str))
        return setup


class Scorer:
    """Macro-F1 of a version on the bench's held-out sets, with the serving code."""

    def __init__(self, models: Path, sets: dict[str, list[Row]], threads: int) -> None:
        self.models, self.sets, self.threads = models, sets, threads

    def __call__(self, tag: str) -> dict[str, float]:
        folder = self.models / tag.split(":")[1]
        meta = json.loads((folder / "metadata.json").read_text())
        classifier = Classifier(folder, int(meta["max_length"]), self.threads)
        labels = meta["labels"]
        scores = {}
        for name, rows in self.sets.items():
            predicted = classifier.predict_indices([t for t, _ in rows])
            truth = [y for _, y in rows]
            named = [labels[i] for i in predicted]
            scores[name] = round(float(f1_score(truth, named, average="macro")), 4)
        return scores


def one_run(
    service: Service, body: dict[str, Any], clients: int, setup_tag: str,
    args: argparse.Namespace, texts: list[str],
) -> dict[str, Any]:  # fmt: skip
    """From the setup version: idle load, then one retrain (under load); timings and the job."""
    service.call("POST", f"/models/{setup_tag}/activate")
    service.served(setup_tag.split(":")[1])
    with Load(service.url, texts, clients) as idle:
        time.sleep(args.idle_seconds if clients else 0)
    start = time.monotonic()
    with Load(service.url, texts, clients) as busy:
        job, job_s = service.run_job(body, args.job_timeout)
        served = start + job_s
        if job["state"] == "succeeded":
            new = job["candidate_version"].split(":")[1]
            service.served(new)
            served = min(time.monotonic(), busy.first_seen.get(new, float("inf")))
    return {
        "job_s": round(job_s, 1),
        "served_s": round(served - start, 1) if job["state"] == "succeeded" else None,
        "job": job,
        "idle": idle.summary(),
        "during": busy.summary(),
    }


def env_variant(spec: str) -> dict[str, str]:
    """`--envs` item "REPLAY_RATIO=2,INCREMENTAL_EPOCHS=1" as a dict ('' is {})."""
    return dict(item.split("=", 1) for item in spec.split(",") if item)


def margin(env: dict[str, str], mode: str) -> float:
    """The gate's margin for `mode` as the server runs with it: the false-rejection test
    uses the same."""
    name = "gate_refit_margin" if mode == "refit" else "gate_margin"
    return float(env.get(name.upper()) or Settings.model_fields[name].default)


def judged(r: dict[str, Any], after: dict[str, float] | None, before: dict[str, float]) -> None:
    """Adds the deltas and whether the decision was a false rejection or false promotion."""
    r["before"], r["after"] = before, after
    promoted = r["job"]["state"] == "succeeded"
    if after is not None:
        r["topic_delta"] = round(after["topic"] - before["topic"], 4)
        r["rest_delta"] = round(after["rest"] - before["rest"], 4)
    good = after is not None and r["topic_delta"] > 0 and r["rest_delta"] >= -r["margin"]
    r["false_rejection"] = not r["wrong"] and not promoted and good
    r["false_promotion"] = r["wrong"] and promoted


def save(results: dict[str, Any]) -> None:
    (OUT / "retrain_bench.json").write_text(json.dumps(results, indent=1, default=str))


def bench(shifts: Shifts, home: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Setup, then every (topic, N, seed, mode, batch kind, variant) run on one server."""
    service = Service(home, args.allow_strays)
    texts = [t for t, _ in shifts.rest_eval]
    try:
        results["setup"] = service.setup(shifts, args.setup_epochs, args.job_timeout)
        tag = results["setup"]["version"]
        batches = [(n, False) for n in args.sizes[:1]] + [(n, True) for n in args.wrong]
        runs = [  # the smallest size and the wrong labels on every topic first, then the rest
            (topic, n, seed, mode, wrong, variant, clients)
            for n, wrong in batches + [(n, False) for n in args.sizes[1:]]
            for topic in args.topics
            for mode in (args.wrong_modes if wrong else args.modes)
            for seed in seeds_of(mode, wrong, args)
            for variant in args.envs
            for clients in args.clients
        ]
        varied = {k for variant in args.envs for k in variant}
        before: dict[str, dict[str, float]] = {}
        for topic, n, seed, mode, wrong, variant, clients in runs:
            data = shifts.topics[topic]
            score = Scorer(service.models, {"topic": data.eval, "rest": shifts.rest_eval}, 2)
            if topic not in before:
                before[topic] = score(tag)
                print(f"\n{topic}: setup {tag} scores {before[topic]}", flush=True)
            posted = data.posted(n, seed)
            if wrong:
                labels = sorted({y for _, y in shifts.store})
                posted = wrong_labels(posted, labels, seed)
            service.set_env({k: variant.get(k) for k in varied})
            service.call("DELETE", "/examples", params={"source": "topic"})
            service.post_examples(posted, "topic")
            r: dict[str, Any] = {
                "topic": topic, "n": n, "seed": seed, "mode": mode, "wrong": wrong,
                "variant": variant, "clients": clients, "margin": margin(service.env, mode),
            }  # fmt: skip
            r |= one_run(service, {"mode": mode, "seed": seed}, clients, tag, args, texts)
            candidate = r["job"].get("candidate_version")
            if candidate:
                r["fit"] = fit_details(home / "bentoml", candidate)
            judged(r, score(candidate) if candidate else None, before[topic])
            if r["job"]["state"] == "timeout":  # kill it; the restarted server fails it
                service.stop()
                service.start()
            results["runs"].append(r)
            save(results)
            print(line(r), flush=True)
    finally:
        service.stop()
        results["other_processes"] = service.others
        save(results)
        if (service.home / "serve.log").exists():
            shutil.copy(service.home / "serve.log", OUT / "retrain_bench-serve.log")


def seeds_of(mode: str, wrong: bool, args: argparse.Namespace) -> list[int]:
    """Refits and wrong batches can have fewer seeds: a refit is the cell's yardstick, not
    what it judges, and every wrong batch must be rejected whatever its seed."""
    chosen = args.wrong_seeds if wrong else args.refit_seeds if mode == "refit" else None
    return chosen or args.seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--topics", nargs="+", choices=sorted(TOPICS), default=list(TOPICS))
    parser.add_argument("--sizes", type=int, nargs="*", default=[200, 1000])
    parser.add_argument("--wrong", type=int, nargs="*", default=[300],
                        help="sizes of wrong-label batches per topic, seed and mode")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--refit-seeds", type=int, nargs="+", default=None,
                        help="seeds of the refit runs (default --seeds)")  # fmt: skip
    parser.add_argument("--wrong-seeds", type=int, nargs="+", default=None,
                        help="seeds of the wrong-label runs (default --seeds)")  # fmt: skip
    parser.add_argument("--wrong-modes", nargs="+", choices=["incremental", "refit", "auto"],
                        default=["incremental"],
                        help="modes of the wrong-label runs (the label check is the same in "
                        "each; a refit costs the most)")  # fmt: skip
    parser.add_argument("--modes", nargs="+", choices=["incremental", "refit", "auto"],
                        default=["incremental", "refit"])  # fmt: skip
    parser.add_argument("--clients", type=int, nargs="+", default=[0])
    parser.add_argument("--envs", type=env_variant, nargs="+", default=[{}], metavar="K=V,K=V",
                        help="server settings to interleave ('' is the environment's); "
                        "the server restarts for each")  # fmt: skip
    parser.add_argument("--allow-strays", action="store_true",
                        help="run beside other servers or retrains (recorded)")  # fmt: skip
    parser.add_argument("--idle-seconds", type=float, default=15)
    parser.add_argument("--setup-epochs", type=float, default=1.0)
    parser.add_argument("--job-timeout", type=float, default=1800, help="seconds per job")
    parser.add_argument("--home", type=Path, default=None,
                        help="keep the setup in HOME between invocations (rebuilt when its "
                        "store, topics or --setup-epochs differ)")  # fmt: skip
    parser.add_argument("--report", type=Path, default=None, metavar="JSON",
                        help="print a saved run's table and acceptance; run nothing")  # fmt: skip
    args = parser.parse_args()
    if args.report:
        runs = json.loads(args.report.read_text())["runs"]
        print(f"{cells(runs)}\n\n{acceptance(runs)}")
        return
    interrupt_on_sigterm()  # SIGTERM unwinds like Ctrl-C: `finally` stops the server's tree
    OUT.mkdir(parents=True, exist_ok=True)
    home = args.home or Path(tempfile.mkdtemp(prefix="retrain-bench-"))
    env = {k: os.environ[k] for k in RETRAIN_ENV if k in os.environ}
    shifts = load_shifts()
    results: dict[str, Any] = {"command": " ".join(sys.argv), "cpu": cpu_info(), "env": env,
                               "store": len(shifts.store), "rest_eval": len(shifts.rest_eval),
                               "topics": {n: {"pool": len(t.pool), "eval": len(t.eval)}
                                          for n, t in shifts.topics.items()},
                               "runs": []}  # fmt: skip
    cpu = results["cpu"]
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in cpu["flags"].items())
    print(f"# retrain topic-shift benchmark\n\nCPU: {cpu['model']}, {cpu['cores']} cores; {flags}")
    print(f"command: {results['command']}\nretrain env: {env}\nstore {results['store']}, rest "
          f"eval {results['rest_eval']}, topics {results['topics']}", flush=True)  # fmt: skip
    started = time.monotonic()
    try:
        bench(shifts, home, args, results)
    finally:
        results["total_s"] = round(time.monotonic() - started, 1)
        save(results)
        runs = results["runs"]
        print(f"\n{cells(runs)}\n\n{acceptance(runs)}")
        print(f"total {results['total_s']:.0f} s; raw numbers in {OUT / 'retrain_bench.json'}")
    if args.home is None:
        shutil.rmtree(home)


if __name__ == "__main__":
    main()
