"""A throwaway Label Studio server for end-to-end tests, and a small client for its API.

`label_studio_server()` runs the real `label-studio start` (`make deploy-tools`
installs it into its own virtualenv, .venv/tools/label-studio: its Django pins
conflict with the project's) on a free loopback port, with a fresh SQLite
database and data directory under a temporary directory, and removes it all on
exit. Each start migrates a fresh database: expect 30-40 s.

Two of Label Studio's defaults would stop a test on one machine, and are off here:
it refuses ML backends on local or private addresses (ML_BLOCK_LOCAL_IP) and
webhooks to them (SSRF_PROTECTION_ENABLED). A deployment whose Label Studio
reaches the service on a cluster address needs the same two settings. Its checks
for new versions, its analytics and its error reports to Sentry are off too: the
tests run offline.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXECUTABLE = ROOT / ".venv" / "tools" / "label-studio" / "bin" / "label-studio"
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 20
USERNAME = "e2e@example.com"

# The labeling config of the end-to-end tests: one text, one single-choice sentiment, its
# choices spelled as Label Studio's own sentiment template spells them.
SENTIMENT_CONFIG = (
    '<View><Text name="text" value="$text"/>'
    '<Choices name="sentiment" toName="text" choice="single">'
    '<Choice value="Positive"/><Choice value="Negative"/><Choice value="Neutral"/>'
    "</Choices></View>"
)


class LabelStudioUnavailableError(RuntimeError):
    """The `label-studio` command is not installed."""


def find_label_studio() -> Path:
    """The `label-studio` executable: $LABEL_STUDIO (the Makefile exports it), else the
    one `make deploy-tools` installs. Not PATH: the tests are pinned to one version."""
    override = os.environ.get("LABEL_STUDIO")
    executable = Path(override) if override else DEFAULT_EXECUTABLE
    if not (executable.is_file() and os.access(executable, os.X_OK)):
        raise LabelStudioUnavailableError(
            f"Label Studio is not installed at {executable}; run `make deploy-tools`"
        )
    return executable


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(home: Path) -> dict[str, str]:
    """A clean environment: Label Studio also reads unprefixed names (PORT, HOST,
    USERNAME, DEBUG...) that the test process or a CI runner may have set."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LABEL_STUDIO_BASE_DATA_DIR": str(home / "data"),
        "DJANGO_DB": "sqlite",
        "LOG_LEVEL": "WARNING",
        "DEBUG": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }


@dataclass(frozen=True)
class LabelStudio:
    """A running server. `token` is the user's API token (see `LabelStudioClient`)."""

    url: str
    token: str
    log: Path

    def client(self) -> LabelStudioClient:
        return LabelStudioClient(self.url, self.token)


@contextlib.contextmanager
def label_studio_server() -> Iterator[LabelStudio]:
    """Start Label Studio with one user; stop it and delete its files on exit.

    Raises LabelStudioUnavailableError when it is not installed; a server that
    exits or does not answer /health in time raises RuntimeError with its log.
    """
    executable = find_label_studio()
    home = Path(tempfile.mkdtemp(prefix="selftune-label-studio-"))
    log_path = home / "label-studio.log"
    port = _free_port()
    token = secrets.token_hex(20)
    argv = [
        str(executable),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--username",
        USERNAME,
        "--password",
        secrets.token_hex(16),
        "--user-token",
        token,
        "--enable-legacy-api-token",
    ]
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log_path.open("wb") as log:
            # A session of its own, so teardown stops the server and anything it started.
            proc = subprocess.Popen(
                argv,
                cwd=home,
                env=_environment(home),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = LabelStudio(f"http://127.0.0.1:{port}", token, log_path)
        _wait_for_health(server, proc)
        yield server
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def _wait_for_health(server: LabelStudio, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"label-studio exited with {proc.returncode} while starting:\n"
                + server.log.read_text(errors="replace")
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.url}/health/", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(
        f"label-studio did not answer /health within {START_TIMEOUT_S} s:\n"
        + server.log.read_text(errors="replace")
    )


def choice(label: str, from_name: str = "sentiment", to_name: str = "text") -> dict[str, Any]:
    """One region of a <Choices> result, as Label Studio stores annotations and predictions."""
    return {
        "from_name": from_name,
        "to_name": to_name,
        "type": "choices",
        "value": {"choices": [label]},
    }


class LabelStudioClient:
    """The calls an end-to-end test makes, as a user or an SDK makes them.

    Authentication: the legacy `Authorization: Token <token>` header, with the
    token given at start (`--user-token`). New organizations refuse legacy tokens
    unless enabled, and `--enable-legacy-api-token` enables them for the one the
    server creates. The alternative, a personal access token (a JWT refresh token
    exchanged at /api/token/refresh for a short-lived access token), needs a
    login session to create it first: more calls for the same access.
    """

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Token {token}"}, timeout=120
        )

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.is_error:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def create_project(self, title: str, label_config: str = SENTIMENT_CONFIG) -> int:
        project = self._call(
            "POST", "/api/projects/", json={"title": title, "label_config": label_config}
        )
        return int(project["id"])

    def connect_ml_backend(
        self, project: int, url: str, basic_auth: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """Connect an ML backend. Label Studio calls its GET /health, then POST /setup,
        before it answers: a backend that fails either is refused (400)."""
        body: dict[str, Any] = {"url": url, "project": project, "title": "selftune"}
        if basic_auth is not None:
            body |= {
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": basic_auth[0],
                "basic_auth_pass": basic_auth[1],
            }
        backend: dict[str, Any] = self._call("POST", "/api/ml/", json=body)
        return backend

    def add_webhook(
        self, project: int, url: str, actions: list[str], headers: dict[str, str]
    ) -> dict[str, Any]:
        """A project webhook for `actions` only (Label Studio's default sends every action)."""
        body = {
            "project": project,
            "url": url,
            "headers": headers,
            "send_payload": True,
            "send_for_all_actions": False,
            "actions": actions,
        }
        webhook: dict[str, Any] = self._call("POST", "/api/webhooks/", json=body)
        return webhook

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import tasks such as {"text": ...}; returns their ids in order."""
        imported = self._call(
            "POST",
            f"/api/projects/{project}/import",
            params={"return_task_ids": "true"},
            json=tasks,
        )
        return [int(i) for i in imported["task_ids"]]

    def retrieve_predictions(self, project: int) -> None:
        """Have Label Studio ask the ML backend (POST /predict, all tasks in one request)
        for the tasks without a prediction of its current model version, and store them.

        It is the Data Manager's "Retrieve Predictions" action; Label Studio also asks
        for one task's prediction when that task is opened (GET /api/tasks/<id>).
        """
        self._call(
            "POST",
            "/api/dm/actions/",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": True, "excluded": []}},
        )

    def task(self, task: int) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", f"/api/tasks/{task}/")
        return found

    def predictions(self, task: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._call("GET", "/api/predictions/", params={"task": task})
        return found

    def annotate(
        self, task: int, result: list[dict[str, Any]], was_cancelled: bool = False
    ) -> dict[str, Any]:
        """Submit an annotation; `was_cancelled`: the annotator skipped the task (an
        empty `result`), which Label Studio stores and sends as an annotation too."""
        annotation: dict[str, Any] = self._call(
            "POST",
            f"/api/tasks/{task}/annotations/",
            json={"result": result, "was_cancelled": was_cancelled},
        )
        return annotation

    def update_annotation(self, annotation: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        updated: dict[str, Any] = self._call(
            "PATCH", f"/api/annotations/{annotation}/", json={"result": result}
        )
        return updated

    def delete_annotation(self, annotation: int) -> None:
        self._call("DELETE", f"/api/annotations/{annotation}/")

    def train(self, ml_backend: int) -> None:
        """Label Studio's "Start Training": it POSTs {"action": "START_TRAINING", ...}
        to the ML backend's /webhook, with the backend's auth, not a webhook's headers."""
        self._call("POST", f"/api/ml/{ml_backend}/train")
