"""What the README says about the code's paths is what runs.

A /predict request is traced in a real `bentoml serve` of two workers: a
`sitecustomize` on the server's PYTHONPATH records, per worker, which of our
files run code on the event loop and the model thread while it is armed
(SIGUSR1), and writes them out when disarmed (SIGUSR2). It is armed only once
both workers have answered a request, so neither is still building its
service. The retrain job's path is a chain of hand-offs, each checked to be
real: one file imports or launches the next or writes the record the next one
reads.
"""

from __future__ import annotations

import ast
import itertools
import json
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import ROOT, bentoml_serve, wait_until

OURS = ("core", "store", "runner", "service", "training", "retrain")
# The files a /predict request runs code in, as README.md lists them (at most 6).
PREDICT_PATH = {
    "service/balance.py",
    "service/metrics.py",
    "service/predict_route.py",
    "service/errors.py",
    "service/model_holder.py",
    "core/runtime.py",
}
# The retrain job's path, as README.md lists it (at most 10 files), and how each file hands
# the job on: it calls (imports) the next, launches it, or writes the record the next reads.
RETRAIN_PATH = (
    "service/admin.py",
    "runner/queue.py",
    "runner/local.py",
    "retrain/__main__.py",
    "retrain/job.py",
    "retrain/plan.py",
    "training/pipeline.py",
    "retrain/evidence.py",
    "retrain/gate.py",
    "service/model_holder.py",
)
LAUNCH = '[sys.executable, "-m", "retrain", "run"'
HAND_OFFS = (
    ("service/admin.py", "store/jobs.py", "import"),  # queued
    ("service/admin.py", "runner/queue.py", "import"),  # this worker's runner woken
    ("runner/queue.py", "store/jobs.py", "import"),  # claimed
    ("runner/queue.py", "runner/local.py", "import"),
    ("runner/local.py", "retrain/__main__.py", "launch"),
    ("retrain/__main__.py", "retrain/job.py", "import"),
    ("retrain/job.py", "retrain/plan.py", "import"),
    ("retrain/job.py", "training/pipeline.py", "import"),
    ("retrain/job.py", "retrain/evidence.py", "import"),
    ("retrain/job.py", "retrain/gate.py", "import"),
    ("retrain/job.py", "store/versions.py", "import"),  # promoted
    ("service/model_holder.py", "store/versions.py", "import"),  # served
)

TRACER = """
import json, os, signal, sys, threading  # noqa: E401

ROOTS = tuple(os.path.join(ROOT, package) + os.sep for package in PACKAGES)
THREADS = ("MainThread", "predict")
seen, armed, answered = set(), False, False


def profile(frame, event, arg):
    global answered
    if event != "call":
        return
    filename = frame.f_code.co_filename
    if not answered and (filename, frame.f_code.co_name) == ANSWERS:  # it took a request
        answered = True
        open(os.path.join(OUT, f"{os.getpid()}.answered"), "w").close()
    if armed and filename.startswith(ROOTS):
        if threading.current_thread().name.startswith(THREADS):
            seen.add(os.path.relpath(filename, ROOT))


def arm(signum, frame):
    global armed
    seen.clear()
    armed = True


def disarm(signum, frame):
    global armed
    armed = False
    with open(os.path.join(OUT, f"{os.getpid()}.json"), "w") as f:
        json.dump(sorted(seen), f)


with open("/proc/self/cmdline", "rb") as cmdline:  # sys.argv is not set up yet
    worker = b"_bentoml_impl.worker.service" in cmdline.read()
if worker:
    signal.signal(signal.SIGUSR1, arm)
    signal.signal(signal.SIGUSR2, disarm)
    sys.setprofile(profile)
    threading.setprofile(profile)
"""


def _workers(pid: int) -> list[psutil.Process]:
    children = psutil.Process(pid).children(recursive=True)
    return [p for p in children if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


def test_a_predict_request_runs_code_in_the_six_files_the_readme_names(
    tiny_version: str, tmp_path: Path
) -> None:
    hooks, out = tmp_path / "hooks", tmp_path / "traces"
    hooks.mkdir()
    out.mkdir()
    settings = f"ROOT = {str(ROOT)!r}\nPACKAGES = {OURS!r}\nOUT = {str(out)!r}\n"
    settings += f"ANSWERS = ({str(ROOT / 'service' / 'predict_route.py')!r}, '_predict')\n"
    (hooks / "sitecustomize.py").write_text(settings + TRACER)
    env = {"PYTHONPATH": str(hooks), "WORKERS": "2"}
    with bentoml_serve(tiny_version.split(":")[0], tmp_path / "serve.log", env) as server:
        wait_until(f"{server.url}/readyz", 200, timeout_s=120)
        body = {"texts": ["the food was great"]}
        # At least five requests (a fresh connection each), and until both workers have
        # answered one: every lazy first-time path (imports, threads) is out of the way, and
        # neither worker can be traced still building its service (then it takes no requests).
        deadline = time.monotonic() + 120
        for sent in itertools.count():
            assert httpx.post(f"{server.url}/predict", json=body, timeout=60).status_code == 200
            if sent >= 4 and len(list(out.glob("*.answered"))) == 2:
                break
            assert time.monotonic() < deadline, "a worker never answered a request"
        workers = _workers(server.pid)
        assert len(workers) == 2
        for worker in workers:
            worker.send_signal(signal.SIGUSR1)
        time.sleep(1)
        answer = httpx.post(f"{server.url}/predict", json=body, timeout=60)
        time.sleep(1)
        for worker in workers:
            worker.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while len(list(out.glob("*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert answer.status_code == 200
    ran = [set(json.loads(trace.read_text())) for trace in out.glob("*.json")]
    traced = max(ran, key=len)  # the worker that took the request; the other ran nothing
    assert traced == PREDICT_PATH, sorted(traced)
    assert min(ran, key=len) <= set(), ran


def _imports(path: str) -> set[str]:
    """The modules of ours that the file at `path` imports (as file paths)."""
    tree = ast.parse((ROOT / path).read_text())
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    files = {m.replace(".", "/") + ".py" for m in modules}
    return {f for f in files if (ROOT / f).exists()}


def test_the_retrain_path_the_readme_names_is_a_chain_of_real_hand_offs() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert len(RETRAIN_PATH) <= 10
    for path in RETRAIN_PATH:
        assert f"`{path}`" in readme, path
    steps = {step for hand_off in HAND_OFFS for step in hand_off[:2]}
    assert set(RETRAIN_PATH) <= steps
    for source, target, how in HAND_OFFS:
        if how == "launch":
            assert LAUNCH in (ROOT / source).read_text(), source
        else:
            assert target in _imports(source), (source, target)


def test_the_readme_lists_the_predict_path_it_traces() -> None:
    readme = (ROOT / "README.md").read_text().replace("\n", " ")
    assert len(PREDICT_PATH) <= 6
    for path in PREDICT_PATH:
        assert f"`{path}`" in readme, path


@pytest.mark.parametrize("package", OURS)
def test_every_package_is_in_the_images_and_the_type_check(package: str) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"{package}*"' in pyproject and f'"{package}"' in pyproject
    assert f"!{package}/" in (ROOT / ".dockerignore").read_text()
    assert (ROOT / package / "__init__.py").exists()
