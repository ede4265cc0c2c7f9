"""A tiny Kubernetes API server on 127.0.0.1: just what the retrain backend calls.

GET a PodTemplate; POST, GET and DELETE batch/v1 Jobs in a namespace. It
answers like the real API server (the same paths, Status objects, 201, 404
NotFound, 409 AlreadyExists, 422 Invalid) and validates every submitted Job
strictly against the Kubernetes schema with kubernetes-validate, so a Job the
real API server would reject is rejected here too. Tests change a Job's status
the way the Job controller would (`set_job_condition`).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import yaml

from core.settings import RunnerSettings

Manifest = dict[str, Any]
K8S_VERSION = "1.33.0"
# Where k8s/overlays/scaled puts the retrain PodTemplate, and its name.
NAMESPACE = "selftune"
TEMPLATE = "selftune-retrain"

_PODTEMPLATE = re.compile(r"^/api/v1/namespaces/([^/]+)/podtemplates/([^/]+)$")
_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs$")
_JOB = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, **details: Any) -> Manifest:
    """A metav1.Status, the body of every API error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Manifest | None


@dataclass
class FakeKubernetes:
    """The state of the fake cluster; safe to change from the test while the server runs."""

    url: str = ""
    podtemplates: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    jobs: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_podtemplate(self, podtemplate: Manifest) -> None:
        """Store a PodTemplate as `kubectl apply` would (with server-set metadata)."""
        obj = copy.deepcopy(podtemplate)
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        meta.setdefault("resourceVersion", "1")
        # The real server serialises the embedded ObjectMeta's zero timestamp as null.
        obj["template"].setdefault("metadata", {})["creationTimestamp"] = None
        with self.lock:
            self.podtemplates[(meta["namespace"], meta["name"])] = obj

    def job(self, namespace: str, name: str) -> Manifest | None:
        with self.lock:
            return copy.deepcopy(self.jobs.get((namespace, name)))

    def set_job_condition(
        self, namespace: str, name: str, type_: str, reason: str = "", message: str = ""
    ) -> None:
        """Finish a Job as the Job controller (1.31+) does: Complete or Failed, then True.

        A failure is first marked FailureTarget, as the controller does while
        the pods terminate, then Failed.
        """
        with self.lock:
            status = self.jobs[(namespace, name)]["status"]
            status.pop("active", None)
            status["ready"] = 0
            types = [type_]
            if type_ == "Complete":
                status["succeeded"] = 1
                status["completionTime"] = now()
                types = ["SuccessCriteriaMet", type_]
            elif type_ == "Failed":
                status["failed"] = 1
                types = ["FailureTarget", type_]
            for t in types:
                status.setdefault("conditions", []).append(
                    {
                        "type": t,
                        "status": "True",
                        "reason": reason or None,
                        "message": message or None,
                        "lastProbeTime": now(),
                        "lastTransitionTime": now(),
                    }
                )

    def set_job_active(self, namespace: str, name: str) -> None:
        """A pod of the Job is running."""
        with self.lock:
            self.jobs[(namespace, name)]["status"].update(active=1, ready=1, startTime=now())

    def handle(self, method: str, url: str, body: Manifest | None) -> tuple[int, Manifest]:
        parts = urlsplit(url)
        with self.lock:
            self.requests.append(Request(method, parts.path, parse_qs(parts.query), body))
            if method == "GET" and (m := _PODTEMPLATE.match(parts.path)):
                return self._get(self.podtemplates, m.group(1), m.group(2), "podtemplates", "")
            if method == "POST" and (m := _JOBS.match(parts.path)):
                return self._create_job(m.group(1), body)
            if method == "GET" and (m := _JOB.match(parts.path)):
                return self._get(self.jobs, m.group(1), m.group(2), "jobs", "batch")
            if method == "DELETE" and (m := _JOB.match(parts.path)):
                code, obj = self._get(self.jobs, m.group(1), m.group(2), "jobs", "batch")
                if code == 200:
                    del self.jobs[(m.group(1), m.group(2))]
                    obj = status_object(200, "", "", name=m.group(2), group="batch", kind="jobs")
                    obj["status"] = "Success"
                return code, obj
        return 404, status_object(404, "NotFound", f"the server could not find {parts.path}")

    @staticmethod
    def _get(
        store: dict[tuple[str, str], Manifest], namespace: str, name: str, kind: str, group: str
    ) -> tuple[int, Manifest]:
        obj = store.get((namespace, name))
        if obj is None:
            resource = f"{kind}.{group}" if group else kind
            return 404, status_object(
                404, "NotFound", f'{resource} "{name}" not found', name=name, group=group, kind=kind
            )
        return 200, copy.deepcopy(obj)

    def _create_job(self, namespace: str, body: Manifest | None) -> tuple[int, Manifest]:
        if not isinstance(body, dict):
            return 400, status_object(400, "BadRequest", "the request body is not a JSON object")
        name = body.get("metadata", {}).get("name", "")
        problems = []
        if body.get("apiVersion") != "batch/v1" or body.get("kind") != "Job":
            problems.append(f"apiVersion/kind: {body.get('apiVersion')}/{body.get('kind')}")
        if body["metadata"].get("namespace", namespace) != namespace:
            problems.append("metadata.namespace: does not match the request's namespace")
        if not _DNS1123_LABEL.fullmatch(name) or len(name) > 63:
            problems.append(f"metadata.name: {name!r} is not a valid DNS-1123 label")
        # One of the API server's own rules that no schema expresses.
        policy = body.get("spec", {}).get("template", {}).get("spec", {}).get("restartPolicy")
        if policy not in ("Never", "OnFailure"):
            problems.append(
                f'spec.template.spec.restartPolicy: Unsupported value: "{policy}": '
                'supported values: "OnFailure", "Never"'
            )
        try:
            kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{'.'.join(map(str, exc.path))}: {exc.message}")
        if problems:
            return 422, status_object(
                422,
                "Invalid",
                f'Job.batch "{name}" is invalid: ' + "; ".join(problems),
                name=name,
                group="batch",
                kind="Job",
            )
        if (namespace, name) in self.jobs:
            return 409, status_object(
                409,
                "AlreadyExists",
                f'jobs.batch "{name}" already exists',
                name=name,
                group="batch",
                kind="jobs",
            )
        obj = copy.deepcopy(body)
        obj["metadata"].update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=now(),
            resourceVersion=str(len(self.requests)),
        )
        obj["status"] = {}
        self.jobs[(namespace, name)] = obj
        return 201, copy.deepcopy(obj)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubernetes  # set on the subclass made per server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        code, obj = self.fake.handle(self.command, self.path, body)
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer  # noqa: N815 (http.server's naming)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; `fake.requests` records every call


@contextmanager
def fake_kubernetes() -> Iterator[FakeKubernetes]:
    """A FakeKubernetes served on a free loopback port for the duration of the block."""
    fake = FakeKubernetes()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="fake-k8s", daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_kubeconfig(path: Path, url: str, namespace: str) -> Path:
    """A kubeconfig pointing at `url` (plain HTTP, a dummy token)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                "contexts": [
                    {
                        "name": "fake",
                        "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                    }
                ],
                "current-context": "fake",
            }
        )
    )
    return path


TIMEOUT_S = 60
STALE_S = 1.0  # a job is stale this long after its last heartbeat


def runner_settings() -> RunnerSettings:
    """Settings of a runner that launches its Jobs on this fake."""
    return RunnerSettings(
        retrain_backend="kubernetes",
        pod_namespace=NAMESPACE,
        retrain_pod_template=TEMPLATE,
        retrain_timeout_s=TIMEOUT_S,
        gate_margin=0.05,
        job_stale_seconds=STALE_S,
    )
