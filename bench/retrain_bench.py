"""Topic-shift retrain benchmark: a model that never saw a topic learns it from N new labels.

    .venv/bin/python bench/retrain_bench.py   # 2 topics, N 200 and 1000, 0 and 64 clients

Topics of tweets-sentiment/train.csv: airline (@united, @AmericanAir, @SouthwestAir,
@USAirways, @JetBlue, @VirginAmerica, @delta) and Coachella. Per topic, on its own
loopback `bentoml serve` (temporary BENTOML_HOME/STATE_DIR, or `--home`): the store
gets every train.csv tweet not of the topic, and a refit on it (`--setup-epochs`,
through the job queue and gate, after a first `training fit` on a small slice) is
the setup version. Per N, the first N topic tweets are posted; per mode and client
count a retrain runs from the setup version (re-activated each time) while `clients`
closed-loop clients send single-text /predict requests, as for `--idle-seconds` before.

Per run: seconds from POST /retrain to the job's end and to the first answer from
the new version; state, gate, example counts, phases (`other`: the job's time outside
them); predict p50/p99 idle and during, failed requests (any non-200); macro-F1 of
the setup version (before) and of the one active after, on held-out topic tweets
(validation.csv, topped up with unposted train.csv ones under 50) and on the rest
of validation.csv. Retrain settings come from the environment (REFIT_EPOCHS,
INCREMENTAL_EPOCHS, REPLAY_*, GATE_*, RETRAIN_THREADS, WORKERS...); `--policies 10:1 0:2`
interleaves retrain CPU policies (RETRAIN_NICE:RETRAIN_THREADS, the server restarts for
each); `--bodies '{}' '{"strategy": "freeze"}'` interleaves POST /retrain bodies, and
`--envs '' REPLAY_RATIO=2` server settings.
After each server start it waits until every worker's retrain standby has imported,
as in a service that has run for a while (`--envs RETRAIN_STANDBY=false`: cold starts).
SIGTERM or Ctrl-C stops each server's whole process tree, and a run refuses to start
while another server or retrain is alive (bench/retrain_helpers.py). Prints a Markdown table;
raw numbers go to bench/out/retrain_bench.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
from sklearn.metrics import f1_score

from core.text import EVAL_FRACTION, in_eval_split
from service.local_backend import STANDBY_LOG
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "tweets-sentiment"
OUT = ROOT / "bench" / "out"
TOKEN = "bench-admin-token-0123456789"
MODEL = "bench-retrain"
CHUNK = 5000  # examples per POST /examples
BATCH = 64  # texts per /predict request when scoring held-out sets
FIRST_FIT = (200, 100)  # the first `training fit`: training texts, evaluation texts
MIN_TOPIC_EVAL = 50
FINAL = ("succeeded", "rejected", "failed")
RETRAIN_ENV = (
    "RETRAIN_THREADS", "RETRAIN_NICE", "RETRAIN_SLOWDOWN", "REPLAY_RATIO", "REPLAY_MIN",
    "REPLAY_MAX", "INCREMENTAL_EPOCHS", "REFIT_EPOCHS", "GATE_TOLERANCE", "GATE_MIN_EVAL",
    "WORKERS",
)  # fmt: skip
TOPICS = {
    "airline": re.compile(
        r"@(united|americanair|southwestair|usairways|jetblue|virginamerica|delta)(?!\w)", re.I
    ),
    "coachella": re.compile("coachella", re.I),
}

Row = tuple[str, str]  # text, label


def read_rows(path: Path) -> list[Row]:
    """Stripped, non-empty texts, one row per text; texts seen with two labels are dropped."""
    labels: dict[str, set[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            if (text := r["text"].strip()) and (label := r["label"].strip()):
                labels.setdefault(text, set()).add(label)
    return [(text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1]


@dataclass
class TopicData:
    base: list[Row]  # the store before the topic
    topic: list[Row]  # topic tweets to post, in order: a run posts the first N
    topic_eval: list[Row]
    topic_eval_source: str
    rest_eval: list[Row]


def topic_data(name: str, args: argparse.Namespace) -> TopicData:
    is_topic = TOPICS[name].search
    train, valid = read_rows(DATA / "train.csv"), read_rows(DATA / "validation.csv")
    random.Random(0).shuffle(train)
    in_train = {t for t, _ in train}
    valid = [r for r in valid if r[0] not in in_train]
    base = [r for r in train if not is_topic(r[0])][: args.base_limit]
    topic = [r for r in train if is_topic(r[0])]
    if max(args.sizes) > len(topic):
        sys.exit(f"{name}: only {len(topic)} topic tweets in train.csv, --sizes asks for more")
    posted, unposted = topic[: max(args.sizes)], topic[max(args.sizes) :]
    topic_eval = [r for r in valid if is_topic(r[0])]
    source = f"validation.csv ({len(topic_eval)})"
    if len(topic_eval) < MIN_TOPIC_EVAL:
        topic_eval += unposted
        source += f" + train.csv topic tweets never posted ({len(unposted)})"
    rest = [r for r in valid if not is_topic(r[0])][: args.rest_eval]
    return TopicData(base, posted, topic_eval, source, rest)


class Service:
    """One `bentoml serve` of MODEL on loopback, with its own model store and database."""

    def __init__(self, home: Path, allow_strays: bool = False) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.home, self.url = home, f"http://127.0.0.1:{port}"
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
        standbys = self.home / "state" / "jobs" / STANDBY_LOG
        ready_before = standbys.read_text().count("ready") if standbys.exists() else 0
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
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"server not ready; see {self.home / 'serve.log'}")
        if self.env.get("RETRAIN_STANDBY", "true").lower() in ("false", "0"):
            return
        # A service in use has had time to start its standbys (service/local_backend.py): so
        # the first job after a restart starts warm like every later one.
        workers = int(self.env.get("WORKERS") or os.cpu_count() or 1)  # Settings' default
        while time.monotonic() < deadline:
            if standbys.exists() and standbys.read_text().count("ready") >= ready_before + workers:
                return
            time.sleep(0.5)
        raise RuntimeError(f"no retrain standby became ready; see {standbys}")

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
            self.call("POST", "/examples", json={"examples": examples, "source": source})

    def run_job(self, body: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], float]:
        """Queue a retrain and wait for its final state, or state "timeout" after `timeout_s`;
        returns (job, seconds from the POST)."""
        start = time.monotonic()
        job_id = self.call("POST", "/retrain", json=body)["job_id"]
        while (job := self.call("GET", f"/jobs/{job_id}"))["state"] not in FINAL:
            if time.monotonic() - start > timeout_s:
                return job | {"state": "timeout"}, time.monotonic() - start
            time.sleep(0.5)
        return job, time.monotonic() - start

    def predict(self, texts: list[str], version: str, timeout_s: float = 120) -> list[str]:
        """Labels of `texts`, every one scored by `version` (retries while workers swap)."""
        labels: list[str] = []
        deadline = time.monotonic() + timeout_s
        for i in range(0, len(texts), BATCH):
            body = {"texts": texts[i : i + BATCH]}
            answers = self.call("POST", "/predict", json=body)
            while any(a["model_version"] != version for a in answers):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers still not all on {version}")
                time.sleep(0.05)
                answers = self.call("POST", "/predict", json=body)
            labels += [a["label"] for a in answers]
        return labels

    def setup(self, data: TopicData, epochs: float, timeout_s: float) -> dict[str, Any]:
        """Start serving the topic-free setup version, made here unless HOME has it."""
        marker, key = self.home / "setup.json", {"base": len(data.base), "epochs": epochs}
        if marker.exists() and (saved := json.loads(marker.read_text()))["key"] == key:
            self.start()
            return dict(saved["setup"])
        shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True)
        # The first version is a plain fit on a small slice: a retrain inherits its recipe.
        held = [in_eval_split(t, EVAL_FRACTION) for t, _ in data.base]
        slices = {"train": [r for r, h in zip(data.base, held, strict=True) if not h],
                  "eval": [r for r, h in zip(data.base, held, strict=True) if h]}  # fmt: skip
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
        self.post_examples(data.base, "base")
        job, wall = self.run_job({"mode": "refit", "epochs": epochs}, timeout_s)
        if job["state"] != "succeeded":
            raise RuntimeError(f"setup refit not promoted (raise --setup-epochs?): {job}")
        setup = {"version": job["candidate_version"], "wall_s": round(wall, 1), "job": job}
        marker.write_text(json.dumps({"key": key, "setup": setup}, default=str))
        return setup


def scores(service: Service, data: TopicData, version: str) -> dict[str, float]:
    """Macro-F1 (sklearn) of `version` on the held-out topic and rest tweets."""
    f1 = {}
    for name, rows in (("topic", data.topic_eval), ("rest", data.rest_eval)):
        predicted = service.predict([t for t, _ in rows], version)
        f1[name] = round(float(f1_score([y for _, y in rows], predicted, average="macro")), 4)
    return f1


def one_run(
    service: Service, body: dict[str, Any], clients: int, setup_tag: str,
    args: argparse.Namespace, texts: list[str],
) -> dict[str, Any]:  # fmt: skip
    """From the setup version: idle load, then one retrain under load; timings and the job."""
    service.call("POST", f"/models/{setup_tag}/activate")
    service.predict(texts[:BATCH], setup_tag.split(":")[1])  # the workers serve it
    with Load(service.url, texts, clients) as idle:
        time.sleep(args.idle_seconds if clients else 0)
    start = time.monotonic()
    with Load(service.url, texts, clients) as busy:
        job, job_s = service.run_job(body, args.job_timeout)
        served = start + job_s
        if job["state"] == "succeeded":
            new = job["candidate_version"].split(":")[1]
            service.predict(["waiting for the new version"], new)
            served = min(time.monotonic(), busy.first_seen.get(new, float("inf")))
    log = service.home / "state" / "jobs" / f"{job['id']}.log"
    steered = re.findall(r"autogroup nice over the job \(per second\): (.*)", log.read_text())
    return {
        "job_s": round(job_s, 1),
        "wall_s": round(served - start, 1),
        "other_s": round(job_s - sum(job["phases"].values()), 1),
        "nice": steered[-1] if steered else None,  # retrain/cpu_share.py's summary
        "job": job,
        "idle": idle.summary(),
        "during": busy.summary(),
    }


HEADER = (
    "| topic | N | mode | nice:threads | clients | s to final state / to new version served | job "
    "| trained (replayed) | phases s | topic F1 before → after | rest F1 before → after "
    "| idle p50 / p99 ms | during p50 / p99 ms | p99 ratio | failed requests |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def env_variant(spec: str) -> dict[str, str]:
    """`--envs` item "REPLAY_RATIO=2,INCREMENTAL_EPOCHS=1" as a dict ('' is {})."""
    return dict(item.split("=", 1) for item in spec.split(",") if item)


def env_policy() -> str:
    """The retrain CPU policy "NICE:THREADS" the environment (or the defaults) give."""
    fields = Settings.model_fields
    nice = os.environ.get("RETRAIN_NICE", fields["retrain_nice"].default)
    return f"{nice}:{os.environ.get('RETRAIN_THREADS', fields['retrain_threads'].default)}"


def row(r: dict[str, Any]) -> str:
    job, idle, busy = r["job"], r["idle"], r["during"]
    gate = (job["gate"] or {}).get("all") or {}
    decision = (
        f"{job['state']} ({gate['candidate_macro_f1']:.3f} vs {gate['active_macro_f1']:.3f})"
        if gate.get("active_macro_f1") is not None
        else f"{job['state']}: {(job['decision'] or job['error'] or job['message'] or '')[:80]}"
    )
    fit = (r.get("fit") or {}).get("phases", {})
    phases = " ".join(f"{k} {v:.0f}" for k, v in [*job["phases"].items(), ("other", r["other_s"])])
    phases += f" (fit: {' '.join(f'{k} {v:.0f}' for k, v in fit.items())})" if fit else ""
    ratio = f"{busy['p99_ms'] / idle['p99_ms']:.2f}×" if idle["p99_ms"] and busy["p99_ms"] else "–"
    b, a = r["f1_before"], r["f1_after"]
    failed = busy["failed"] + idle["failed"]
    body = f" {json.dumps(r['body'])}" if r.get("body") else ""
    steered = f"; nice {r['nice']}" if r.get("nice") else ""
    return (
        f"| {r['topic']} | {r['n']} | {r['mode']}{body} | {r['policy']}{steered} | {r['clients']} "
        f"| {r['job_s']:.0f} / {r['wall_s']:.0f} | {decision} "
        f"| {job['trained_examples']} ({job['replayed_examples']}) "
        f"| {phases} "
        f"| {b['topic']:.3f} → {a['topic']:.3f} | {b['rest']:.3f} → {a['rest']:.3f} "
        f"| {idle['p50_ms'] or '–'} / {idle['p99_ms'] or '–'} "
        f"| {busy['p50_ms'] or '–'} / {busy['p99_ms'] or '–'} | {ratio} "
        f"| {failed} of {failed + busy['ok'] + idle['ok']} |"
    )


def save(results: dict[str, Any]) -> None:
    (OUT / "retrain_bench.json").write_text(json.dumps(results, indent=2, default=str))


def bench_topic(name: str, home: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Setup, then every (N, mode, clients) run of one topic on its own server."""
    data = topic_data(name, args)
    service = Service(home / name, args.allow_strays)
    info: dict[str, Any] = {"base_examples": len(data.base), "topic_eval": data.topic_eval_source,
                            "rest_eval": len(data.rest_eval)}  # fmt: skip
    results["topics"][name] = info
    print(f"\n{name}: {info}", flush=True)
    texts = [t for t, _ in data.rest_eval]
    try:
        info["setup"] = service.setup(data, args.setup_epochs, args.job_timeout)
        tag = info["setup"]["version"]
        service.call("POST", f"/models/{tag}/activate")
        info["f1_setup"] = scores(service, data, tag.split(":")[1])
        print(f"setup version {tag}: macro-F1 {info['f1_setup']}\n\n{HEADER}", flush=True)
        runs = [
            (n, mode, body, variant, clients, policy)
            for n in args.sizes
            for _ in range(args.rounds)
            for mode in args.modes
            for body in args.bodies
            for variant in args.envs
            for policy in args.policies  # each policy's quiet and loaded runs back to back
            for clients in args.clients
        ]
        # Re-posting deleted rows can fail in SQLite (reused ids vs tombstones): post once.
        marker = service.home / "topic-posted.json"
        posted = json.loads(marker.read_text()) if marker.exists() else None
        varied = {k for variant in args.envs for k in variant}
        for n, mode, body, variant, clients, policy in runs:
            if n != posted:
                service.call("DELETE", "/examples", params={"source": "topic"})
                service.post_examples(data.topic[:n], "topic")
                marker.write_text(json.dumps(posted := n))
            nice, threads = policy.split(":") if policy else (None, None)
            service.set_env({"RETRAIN_NICE": nice, "RETRAIN_THREADS": threads}
                            | {k: variant.get(k) for k in varied})  # fmt: skip
            r = {"topic": name, "n": n, "mode": mode, "body": body | variant, "clients": clients,
                 "policy": policy or env_policy(), "load_before": os.getloadavg()}  # fmt: skip
            r |= one_run(service, {"mode": mode, **body}, clients, tag, args, texts)
            r["load_after"] = os.getloadavg()
            r["f1_before"] = r["f1_after"] = info["f1_setup"]
            if candidate := r["job"].get("candidate_version"):
                r["fit"] = fit_details(home / name / "bentoml", candidate)
            if r["job"]["state"] == "succeeded":
                r["f1_after"] = scores(service, data, candidate.split(":")[1])
            if r["job"]["state"] == "timeout":  # kill it; the restarted server fails it
                service.stop()
                service.start()
            results["runs"].append(r)
            save(results)
            print(row(r), flush=True)
    finally:
        service.stop()
        info["other_processes"] = service.others
        save(results)
        if (service.home / "serve.log").exists():
            shutil.copy(service.home / "serve.log", OUT / f"retrain_bench-{name}-serve.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--topics", nargs="+", choices=sorted(TOPICS), default=sorted(TOPICS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--modes", nargs="+", choices=["incremental", "refit", "auto"],
                        default=["incremental", "refit"])  # fmt: skip
    parser.add_argument("--clients", type=int, nargs="+", default=[0, 64])
    parser.add_argument("--policies", nargs="+", default=[None], metavar="NICE:THREADS",
                        help="retrain CPU policies to interleave (the server restarts with "
                        "RETRAIN_NICE/RETRAIN_THREADS); default: the environment's")  # fmt: skip
    parser.add_argument("--bodies", type=json.loads, nargs="+", default=[{}], metavar="JSON",
                        help="POST /retrain fields besides mode, interleaved")  # fmt: skip
    parser.add_argument("--envs", type=env_variant, nargs="+", default=[{}], metavar="K=V,K=V",
                        help="server settings to interleave ('' is the environment's); "
                        "the server restarts for each")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=1, help="repeat each N's runs")
    parser.add_argument(
        "--allow-strays",
        action="store_true",
        help="run while other bentoml/retrain processes are alive (recorded)",
    )
    parser.add_argument("--idle-seconds", type=float, default=15)
    parser.add_argument("--setup-epochs", type=float, default=0.3)
    parser.add_argument("--base-limit", type=int, default=None, help="cap the base store")
    parser.add_argument("--rest-eval", type=int, default=1000)
    parser.add_argument("--job-timeout", type=float, default=1800, help="seconds per job")
    parser.add_argument("--home", type=Path, default=None,
                        help="keep each topic's setup in HOME/TOPIC between invocations "
                        "(rebuilt when its base store or --setup-epochs differ)")  # fmt: skip
    args = parser.parse_args()
    interrupt_on_sigterm()  # SIGTERM unwinds like Ctrl-C: `finally` stops each server's tree
    OUT.mkdir(parents=True, exist_ok=True)
    home = args.home or Path(tempfile.mkdtemp(prefix="retrain-bench-"))
    env = {k: os.environ[k] for k in RETRAIN_ENV if k in os.environ}
    results: dict[str, Any] = {"command": " ".join(sys.argv), "cpu": cpu_info(), "env": env,
                               "topics": {}, "runs": []}  # fmt: skip
    cpu = results["cpu"]
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in cpu["flags"].items())
    print(f"# retrain topic-shift benchmark\n\nCPU: {cpu['model']}, {cpu['cores']} cores; {flags}")
    print(f"command: {results['command']}\nretrain env: {env}", flush=True)
    started = time.monotonic()
    for name in args.topics:
        bench_topic(name, home, args, results)
    results["total_s"] = round(time.monotonic() - started, 1)
    save(results)
    print(f"\ntotal {results['total_s']:.0f} s; raw numbers in {OUT / 'retrain_bench.json'}")
    if args.home is None:
        shutil.rmtree(home)


if __name__ == "__main__":
    main()
