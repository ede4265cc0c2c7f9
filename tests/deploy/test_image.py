"""The images are built from the project's Dockerfile and run, as a cluster would run them.

buildah builds both targets on a locally made Debian 12 base (tests/deploy/image.py);
the `serve` image then serves the session's tiny model from a mounted model
store and database as UID 10001, answers /predict, and exits on SIGTERM; the
`full` image carries CPU-only torch and runs the retrain CLI. Where buildah or
debootstrap cannot run (not root, not installed) these tests skip and say why,
except under CI, where `make test` installs them and their absence fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from store import open_store, versions
from tests.deploy.conftest import ROOT
from tests.deploy.image import HOST_CA_BUNDLE, Buildah, base_image, image_store, missing_tools
from tests.fake_k8s import write_kubeconfig
from tests.helpers import free_port, kill_tree

# A cold run builds the base and both images (minutes, see README "Deploying");
# a warm one takes their layers from the cache.
pytestmark = pytest.mark.timeout(3600)

APP_UID = 10001
READY_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30  # BentoML's graceful drain; k8s gives the pod 60 s


@pytest.fixture(scope="module")
def buildah() -> Iterator[Buildah]:
    reason = missing_tools()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the image tests are required under CI: {reason}", pytrace=False)
        pytest.skip(f"image tests skipped: {reason}")
    with image_store() as store:
        yield store
        if {"serve", "full"} <= store.built:  # a partial run keeps the other's cache
            store.remove_unused([store.base, *(store.tag(t) for t in store.built)])


def find_links() -> list[str]:
    """The folders this machine's pip looks for wheels in: its config and PIP_FIND_LINKS."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    configured = [
        value.strip("'\"")
        for key, _, value in (line.partition("=") for line in listing.splitlines())
        if key.endswith("find-links")
    ]
    return " ".join([*configured, os.environ.get("PIP_FIND_LINKS", "")]).split()


def local_torch_wheel() -> Path | None:
    """The pinned CPU torch wheel where this machine's pip finds it, if it has one."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        train = tomllib.load(f)["project"]["optional-dependencies"]["train"]
    version = next(r.split("==")[1] for r in train if r.startswith("torch=="))
    for folder in find_links():
        found = sorted(Path(folder).glob(f"torch-{version}+cpu-cp311-cp311-*x86_64.whl"))
        if found:
            return found[-1]
    return None


def build(buildah: Buildah, target: str) -> str:
    buildah.base = base_image(buildah)
    args = {"PYTHON_BASE": buildah.base}
    volumes = [f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"] if HOST_CA_BUNDLE.is_file() else []
    wheel = local_torch_wheel() if target == "full" else None
    if wheel is not None:  # else PyTorch's CPU index, the Dockerfile's default
        volumes.append(f"{wheel.parent}:/wheels:ro")
        args["TORCH_WHEEL"] = f"/wheels/{wheel.name}"
    return buildah.build(ROOT, target, args, volumes)


@pytest.fixture(scope="module")
def serve_image(buildah: Buildah) -> str:
    return build(buildah, "serve")


@pytest.fixture(scope="module")
def full_image(buildah: Buildah) -> str:
    return build(buildah, "full")


def run_in(buildah: Buildah, image: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`argv` in a fresh container of `image`, as the image's user."""
    container = buildah("from", image)
    try:
        return subprocess.run(
            [*buildah.run_args(), container, "--", *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        buildah("rm", container)


def test_both_images_run_as_uid_10001_under_an_init_with_a_health_check(
    buildah: Buildah, serve_image: str, full_image: str
) -> None:
    for image in (serve_image, full_image):
        config = buildah.config(image)
        assert config["User"] == f"{APP_UID}:{APP_UID}"
        assert config["Entrypoint"][0] == "dumb-init"
        assert "/livez" in " ".join(config["Healthcheck"]["Test"])


def test_the_serve_image_has_no_torch(buildah: Buildah, serve_image: str) -> None:
    code = "import importlib.util as u; print(u.find_spec('torch'))"
    found = run_in(buildah, serve_image, "python", "-c", code)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "None"


def test_the_full_image_has_cpu_torch_and_runs_the_retrain_cli(
    buildah: Buildah, full_image: str
) -> None:
    code = "import torch; print(torch.__version__, torch.version.cuda)"
    torch = run_in(buildah, full_image, "python", "-c", code)
    assert torch.returncode == 0, torch.stderr
    assert re.fullmatch(r"2\.13\.0\+cpu None", torch.stdout.strip())
    help_text = run_in(buildah, full_image, "python", "-m", "retrain", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "bootstrap" in help_text.stdout and "run" in help_text.stdout


def owned_by_app(path: Path) -> None:
    for item in [path, *path.rglob("*")]:
        os.chown(item, APP_UID, APP_UID, follow_symlinks=False)


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(queue.pop())], capture_output=True, text=True
        ).stdout.split()
        found += [int(c) for c in children]
        queue += [int(c) for c in children]
    return found


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def uids(pid: int) -> set[int]:
    """Real, effective, saved and filesystem UIDs of a process."""
    line = next(
        li for li in Path(f"/proc/{pid}/status").read_text().splitlines() if li.startswith("Uid:")
    )
    return {int(u) for u in line.split()[1:]}


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Until /readyz answers 200; fails at once if the container exits first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            state = f"exited with {proc.returncode}" if proc.poll() is not None else "not ready"
            pytest.fail(f"the container {state}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def test_the_serve_image_answers_predict_as_uid_10001_and_stops_on_sigterm(
    buildah: Buildah, serve_image: str, tiny_version: str, bentoml_home: Path, tmp_path: Path
) -> None:
    """The image's own command, as its own user, on a mounted model store and database."""
    name, version = tiny_version.split(":")
    home, state = tmp_path / "bentoml", tmp_path / "state"
    shutil.copytree(bentoml_home / "models" / name, home / "models" / name)
    state.mkdir()
    store = open_store(f"sqlite:///{state / 'service.db'}")  # the schema, made out here
    with store.transaction() as tx:
        versions.activate(tx, name, tiny_version, "activated outside the image")
    # The serve image retrains through the Kubernetes API; serving never calls it.
    write_kubeconfig(state / "kubeconfig", "http://127.0.0.1:9", "default")
    owned_by_app(home)
    owned_by_app(state)
    config = buildah.config(serve_image)
    port = free_port()
    env = {"HOST": "127.0.0.1", "PORT": str(port), "MODEL_NAME": name, "WORKERS": "1"}
    env["KUBECONFIG"] = "/var/lib/selftune/kubeconfig"
    container = buildah("from", serve_image)
    command = [
        *buildah.run_args(),
        "--volume",
        f"{home}:/var/lib/bentoml",
        "--volume",
        f"{state}:/var/lib/selftune",
        *(f"--env={k}={v}" for k, v in env.items()),
        container,
        "--",
        *config["Entrypoint"],
        *config["Cmd"],
    ]
    log = tmp_path / "container.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(proc, port, log)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/predict", json={"texts": ["the food was great"]}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["model_version"] == version
        assert answer.json()[0]["label"] in {"negative", "neutral", "positive"}

        inside = descendants(proc.pid)
        init = next(p for p in inside if Path(command_line(p)[0]).name == "dumb-init")
        servers = descendants(init)
        assert servers, "no process under dumb-init"
        assert all(uids(p) == {APP_UID} for p in [init, *servers]), [
            (command_line(p), uids(p)) for p in [init, *servers]
        ]

        os.kill(init, signal.SIGTERM)  # what `docker stop` and the kubelet send to PID 1
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"still running {STOP_TIMEOUT_S} s after SIGTERM:\n{log.read_text()[-3000:]}"
            )
        assert code == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
        buildah("rm", container)
