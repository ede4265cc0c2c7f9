"""RETRAIN_BACKEND=kubernetes: each retrain job runs as a Kubernetes Job (docs/DESIGN.md #13).

The pod comes from a PodTemplate (RETRAIN_POD_TEMPLATE in POD_NAMESPACE,
shipped by k8s/overlays/scaled), so image, volumes, resources and security
settings are kept by kustomize beside the Deployment instead of in code. Per
queued job this backend creates

    Job selftune-retrain-<job id>
      labels                  = the template's labels + selftune.io/job-id: <job id>
      backoffLimit            = 0      (the job queue decides retries, not Kubernetes)
      activeDeadlineSeconds   = RETRAIN_TIMEOUT_S
      ttlSecondsAfterFinished = 86400
      template                = the PodTemplate's, with env JOB_ID set to the job id and
                                the server's retrain settings (GATE_MARGIN, ...) set

and follows it by reading the Job's status. The training pod records its own
result in the database (`python -m retrain run --job-id ID`); the
JobRunner only needs to know when it ended and, if it failed, why. A Job
outlives the replica that launched it: when that replica's heartbeats stop
(scaled down, rolled over) any other replica's runner takes the job over and
follows the same Job by name (`adopt`), so a Job whose pod is still pending or
pulling its image is judged by its status, never failed for the launcher's silence.
A cancelled job's Job is deleted by whichever replica took the request (`cancel`).

The server's Role (k8s/overlays/scaled/rbac.yaml) grants exactly: get on the
one PodTemplate, and create/get/delete on Jobs. Everything here
stays within that: no pod, log or status-subresource access.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError

from core.settings import RunnerSettings
from store.jobs import Job

log = logging.getLogger(__name__)

JOB_NAME_PREFIX = "selftune-retrain-"
JOB_ID_LABEL = "selftune.io/job-id"
JOB_ID_ENV = "JOB_ID"
TTL_AFTER_FINISHED_S = 86400
# Job names end up in the pods' `batch.kubernetes.io/job-name` label: a DNS-1123 label.
MAX_JOB_NAME = 63
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# (connect, read) seconds per API call: a hung API server must not stop the
# runner's heartbeats for long, or another worker would reap the job as stale.
REQUEST_TIMEOUT = (5.0, 20.0)
APPLY_HINT = "create it with `kubectl apply -k k8s/overlays/scaled`"
RBAC_FILE = "k8s/overlays/scaled/rbac.yaml"
TEMPLATE_FILE = "k8s/overlays/scaled/retrain-podtemplate.yaml"

Manifest = dict[str, Any]


class KubernetesBackendError(RuntimeError):
    """A retrain Job could not be created; the message says what to fix."""


def forwarded_settings(settings: RunnerSettings) -> dict[str, str]:
    """The server's retrain settings, set in each Job so the pod decides as the server would.

    Where the state lives stays the template's (its volumes and the Secret's URL).
    """
    env = settings.retrain_env()
    return {k: v for k, v in env.items() if k not in ("STATE_DIR", "DATABASE_URL")}


def job_name(job_id: str) -> str:
    """`selftune-retrain-<job id>`, checked to be a valid Job name (a DNS-1123 label)."""
    name = JOB_NAME_PREFIX + job_id
    if len(name) > MAX_JOB_NAME or not _DNS1123_LABEL.fullmatch(name):
        raise KubernetesBackendError(
            f"job id {job_id!r} does not make a valid Kubernetes Job name ({name!r} must be "
            f"lower-case alphanumerics and '-', at most {MAX_JOB_NAME} characters)"
        )
    return name


def _api_reason(exc: ApiException) -> str:
    """The API server's own message from its Status body, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"HTTP {exc.status} {exc.reason}"


def load_api_client() -> client.ApiClient:
    """An API client: in-cluster when KUBERNETES_SERVICE_HOST is set, else from kubeconfig.

    A private Configuration rather than the library's global default, so
    nothing else in the process is reconfigured behind its back.
    """
    configuration = client.Configuration()
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            # $KUBECONFIG read now: the library reads it once, when first imported.
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None,
                client_configuration=configuration,
            )
    except ConfigException as exc:
        where = (
            "the pod's service account token (is automountServiceAccountToken off for "
            "the server's pod?)"
            if in_cluster
            else "a kubeconfig ($KUBECONFIG or ~/.kube/config)"
        )
        raise KubernetesBackendError(
            f"RETRAIN_BACKEND=kubernetes could not load Kubernetes credentials from {where}: "
            f"{exc}; fix that or set RETRAIN_BACKEND=local"
        ) from exc
    return client.ApiClient(configuration)


class KubernetesJob:
    """One retrain Job in the cluster, followed through its status (no pod or log access)."""

    def __init__(self, batch: client.BatchV1Api, namespace: str, name: str) -> None:
        self.batch = batch
        self.namespace = namespace
        self.name = name
        self._code: int | None = None
        self._description = f"Kubernetes Job {namespace}/{name} is still running"

    @property
    def _logs_hint(self) -> str:
        return f"see `kubectl -n {self.namespace} logs job/{self.name}` while the Job is kept"

    def exit_code(self) -> int | None:
        """None while active or pending; 0 when Complete; 1 when Failed or gone.

        A Job that vanished (deleted by hand, or by its TTL) can no longer
        finish, so it counts as failed. Other API errors are taken as
        transient: the job stays running, and RETRAIN_TIMEOUT_S bounds it.
        """
        if self._code is not None:
            return self._code
        try:
            k8s_job = self.batch.read_namespaced_job(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                self._finish(
                    1,
                    f"Kubernetes Job {self.namespace}/{self.name} does not exist (deleted by "
                    "someone, removed after its TTL, or never created because the replica "
                    "that claimed the job stopped first)",
                )
                return self._code
            if exc.status in (401, 403):
                self._finish(
                    1,
                    f"reading Kubernetes Job {self.namespace}/{self.name} was refused "
                    f"({_api_reason(exc)}); the server's Role needs get on batch jobs "
                    f"({RBAC_FILE})",
                )
                return self._code
            log.warning("job %s: reading its status failed, retrying: %s", self.name, exc)
            return None
        except Exception as exc:  # connection refused, timeouts: the API server may come back
            log.warning("job %s: reading its status failed, retrying: %s", self.name, exc)
            return None
        conditions = {
            c.type: c
            for c in (k8s_job.status.conditions or [] if k8s_job.status else [])
            if c.status == "True"
        }
        if "Complete" in conditions:
            self._finish(0, f"Kubernetes Job {self.namespace}/{self.name} completed")
        elif "Failed" in conditions:
            failed = conditions["Failed"]
            reason = failed.reason or "Failed"
            message = f": {failed.message}" if failed.message else ""
            self._finish(
                1,
                f"Kubernetes Job {self.namespace}/{self.name} failed ({reason}{message}); "
                + self._logs_hint,
            )
        return self._code

    def _finish(self, code: int, description: str) -> None:
        self._code = code
        self._description = description
        (log.info if code == 0 else log.warning)("%s", description)

    def kill(self) -> None:
        """Delete the Job; Background propagation lets the garbage collector remove its pods.

        Never raises: the runner calls this while failing the job anyway.
        """
        try:
            self.batch.delete_namespaced_job(
                self.name,
                self.namespace,
                propagation_policy="Background",
                _request_timeout=REQUEST_TIMEOUT,
            )
            log.info("deleted Kubernetes Job %s/%s", self.namespace, self.name)
        except Exception as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return  # already gone
            # Not raised: the runner is failing the job either way, and the
            # Job's activeDeadlineSeconds still ends it within RETRAIN_TIMEOUT_S.
            log.error(
                "could not delete Kubernetes Job %s/%s (%s); delete it with "
                "`kubectl -n %s delete job %s`",
                self.namespace,
                self.name,
                _api_reason(exc) if isinstance(exc, ApiException) else exc,
                self.namespace,
                self.name,
            )

    def log_tail(self) -> str:
        """How the Job ended, from its status: the pods' logs are not readable by the server."""
        return self._description


class KubernetesBackend:
    """Launches each retrain job as a batch/v1 Job built from the retrain PodTemplate.

    The template is read at every launch, so `kubectl apply` of a new image
    or resource limit takes effect from the next job without a restart.
    """

    jobs_outlive_runner = True

    def __init__(
        self, settings: RunnerSettings, api_client: client.ApiClient | None = None
    ) -> None:
        self.settings = settings
        self.namespace = settings.pod_namespace
        self.template_name = settings.retrain_pod_template
        self.api_client = api_client if api_client is not None else load_api_client()
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)

    def adopt(self, job: Job) -> KubernetesJob:
        """Follow the Job of a job another replica launched (its first status read judges it:
        a Job that is gone or failed ends the job, a pending or active one is watched)."""
        return KubernetesJob(self.batch, self.namespace, job_name(job.id))

    def cancel(self, job_id: str) -> None:
        KubernetesJob(self.batch, self.namespace, job_name(job_id)).kill()

    def launch(self, job: Job) -> KubernetesJob:
        name = job_name(job.id)
        manifest = self.build_job(self.read_template(), job.id)
        try:
            # from_dict drops fields this client does not know (a newer cluster's
            # defaults in the template) instead of failing on them.
            body = client.V1Job.from_dict(manifest)
        except ValidationError as exc:
            raise KubernetesBackendError(
                f"PodTemplate {self.namespace}/{self.template_name} does not make a valid Job "
                f"for this Kubernetes client: {exc}; fix the template "
                f"({TEMPLATE_FILE}) and re-apply it"
            ) from exc
        assert body is not None  # from_dict answers None only for None
        try:
            self.batch.create_namespaced_job(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
            log.info("job=%s created Kubernetes Job %s/%s", job.id, self.namespace, name)
        except ApiException as exc:
            if exc.status == 409:
                # Created before, e.g. by a server that restarted since: follow that one.
                log.warning(
                    "job=%s Kubernetes Job %s/%s already exists; adopting it",
                    job.id,
                    self.namespace,
                    name,
                )
            elif exc.status == 403:
                raise KubernetesBackendError(
                    f"creating Kubernetes Job {self.namespace}/{name} was refused "
                    f"({_api_reason(exc)}); the server's Role needs create on batch jobs in "
                    f"namespace {self.namespace!r} ({RBAC_FILE})"
                ) from exc
            elif exc.status == 422:
                raise KubernetesBackendError(
                    f"the API server rejected the retrain Job built from PodTemplate "
                    f"{self.namespace}/{self.template_name}: {_api_reason(exc)}; fix the "
                    f"template ({TEMPLATE_FILE}) and re-apply it"
                ) from exc
            else:
                raise KubernetesBackendError(
                    f"could not create Kubernetes Job {self.namespace}/{name}: {_api_reason(exc)}"
                ) from exc
        return KubernetesJob(self.batch, self.namespace, name)

    def read_template(self) -> Manifest:
        """The PodTemplate as the API server has it, as plain JSON to copy from."""
        where = f"PodTemplate {self.template_name!r} in namespace {self.namespace!r}"
        try:
            # _preload_content=False: the raw urllib3 response, not a V1PodTemplate.
            response: Any = self.core.read_namespaced_pod_template(
                self.template_name,
                self.namespace,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise KubernetesBackendError(
                    f"{where} does not exist; {APPLY_HINT}, or point RETRAIN_POD_TEMPLATE "
                    "and POD_NAMESPACE at the right one"
                ) from exc
            if exc.status == 403:
                raise KubernetesBackendError(
                    f"reading {where} was refused ({_api_reason(exc)}); the server's Role "
                    f"must grant get on podtemplates named {self.template_name!r} "
                    f"({RBAC_FILE} names only 'selftune-retrain')"
                ) from exc
            raise KubernetesBackendError(f"could not read {where}: {_api_reason(exc)}") from exc
        template: Manifest = json.loads(response.data)
        return template

    def build_job(self, podtemplate: Manifest, job_id: str) -> Manifest:
        """The Job for one retrain job, from the PodTemplate (the shape the manifests document)."""
        where = f"PodTemplate {self.namespace}/{self.template_name}"
        template = copy.deepcopy(podtemplate.get("template") or {})
        spec = template.get("spec") or {}
        containers = spec.get("containers") or []
        job_id_envs = [
            entry
            for container in containers
            for entry in container.get("env") or []
            if entry.get("name") == JOB_ID_ENV
        ]
        if not job_id_envs:
            raise KubernetesBackendError(
                f"{where} has no container with an env var {JOB_ID_ENV}, so its command's "
                f"$({JOB_ID_ENV}) would not name the job; {APPLY_HINT} to restore it"
            )
        for entry in job_id_envs:
            entry.pop("valueFrom", None)
            entry["value"] = job_id
        forwarded = forwarded_settings(self.settings)
        for container in containers:
            env = [e for e in container.get("env") or [] if e.get("name") not in forwarded]
            container["env"] = env + [{"name": k, "value": v} for k, v in forwarded.items()]
        # Only what a pod template's metadata may carry: a server's answer can
        # hold read-only fields (e.g. "creationTimestamp": null) in it.
        meta = template.get("metadata") or {}
        template["metadata"] = {k: meta[k] for k in ("labels", "annotations") if meta.get(k)}
        labels = {**(podtemplate.get("metadata", {}).get("labels") or {}), JOB_ID_LABEL: job_id}
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job_name(job_id), "namespace": self.namespace, "labels": labels},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": self.settings.retrain_timeout_s,
                "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
                "template": template,
            },
        }
