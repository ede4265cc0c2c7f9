"""The Kubernetes manifests, rendered per overlay: what runs in the pods.

Commands, probes, resources, the restricted Pod Security profile, writable
mounts, graceful drain, environment (every variable a setting the service
accepts), images, and what each overlay promises about replicas, storage and
where retraining runs.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from service.settings import Settings
from tests.deploy.conftest import Manifest
from tests.deploy.manifests import (
    containers,
    env,
    env_secret_key,
    env_value,
    kind,
    one,
    pod_templates,
    port_names_and_numbers,
    quantity,
    ref,
    selects,
    server_container,
    server_pod_spec,
)

# Environment variables the containers set that are not service settings.
NON_SETTINGS_ENV = {
    "BENTOML_HOME": "BentoML's home; the model store is its models/",
    "BENTOML_DO_NOT_TRACK": "BentoML usage tracking off",
    "HF_HUB_OFFLINE": "never download from the Hugging Face hub",
    "HF_HOME": "Hugging Face cache, on a writable mount",
    "TOKENIZERS_PARALLELISM": "no tokenizer threads in forked workers",
    "OMP_NUM_THREADS": "torch intra-op threads in the retrain Job",
    "HOME": "the user's home, a writable mount",
    "POD_NAMESPACE": "where the kubernetes retrain backend creates Jobs",
    "RETRAIN_POD_TEMPLATE": "the PodTemplate the kubernetes retrain backend copies",
    "JOB_ID": "the job a retrain Job runs, set per Job by the backend",
}
# Variables naming a directory the process writes to.
WRITABLE_PATH_ENV = ("BENTOML_HOME", "STATE_DIR", "HOME", "HF_HOME")

BOOTSTRAP_COMMAND = ["python", "-m", "retrain", "bootstrap"]
RETRAIN_COMMAND = ["python", "-m", "retrain", "run", "--job-id", "$(JOB_ID)"]


def test_single_bootstraps_the_model_store_before_serving(
    rendered: dict[str, list[Manifest]],
) -> None:
    spec = server_pod_spec(rendered["single"])
    [init] = spec["initContainers"]
    assert init["command"] == BOOTSTRAP_COMMAND
    assert init["image"] == spec["containers"][0]["image"]
    job = one(rendered["bootstrap"], "Job", "selftune-bootstrap")
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == init["command"]


def test_retrain_pod_template_runs_the_training_cli_once(
    rendered: dict[str, list[Manifest]],
) -> None:
    objs = rendered["scaled"]
    podtemplate = one(objs, "PodTemplate", "selftune-retrain")
    spec = podtemplate["template"]["spec"]
    # Jobs allow only Never or OnFailure; the job queue, not the kubelet, retries.
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    account = one(objs, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    [c] = spec["containers"]
    assert c["command"] == RETRAIN_COMMAND
    assert "JOB_ID" in env(c)
    assert env_secret_key(c, "DATABASE_URL") == "database-url"
    server = server_container(objs)
    assert env_value(c, "BENTOML_HOME") == env_value(server, "BENTOML_HOME")
    assert env_value(c, "MODEL_NAME") == env_value(server, "MODEL_NAME")


def test_batch_pods_run_once_and_jobs_are_bounded(objs: list[Manifest]) -> None:
    for owner, template in pod_templates(objs):
        if owner.startswith(("Job/", "PodTemplate/")):
            # Jobs allow only Never or OnFailure; a failed run is recorded, not restarted.
            assert template["spec"]["restartPolicy"] == "Never", owner
    for job in kind(objs, "Job"):
        spec = job["spec"]
        assert spec["backoffLimit"] == 0, ref(job)
        assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0


def test_probes_hit_the_bentoml_health_endpoints_on_existing_ports(objs: list[Manifest]) -> None:
    for c in server_pod_spec(objs)["containers"]:
        known = port_names_and_numbers(c)
        paths = {}
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(probe_name)
            assert probe, f"{c['name']}: no {probe_name}"
            assert probe["httpGet"]["port"] in known, f"{c['name']}: {probe_name} port"
            paths[probe_name] = probe["httpGet"]["path"]
        assert paths == {
            "startupProbe": "/livez",
            "livenessProbe": "/livez",
            "readinessProbe": "/readyz",
        }
        startup = c["startupProbe"]
        # Model load and warm-up must fit before liveness may restart the pod.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_every_container_requests_no_more_than_its_limits(objs: list[Manifest]) -> None:
    for owner, template in pod_templates(objs):
        for c in containers(template["spec"]):
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            for resource in ("cpu", "memory"):
                assert resource in requests and resource in limits, f"{owner}: {resource}"
                assert quantity(requests[resource]) <= quantity(limits[resource]), (
                    f"{owner}/{c['name']}: {resource} request {requests[resource]} > "
                    f"limit {limits[resource]}"
                )


def test_cpu_request_equals_the_threads_onnx_runtime_uses(objs: list[Manifest]) -> None:
    """WORKERS x ORT_THREADS cores are requested (docs/DESIGN.md #2)."""
    c = server_container(objs)
    workers, threads = int(env_value(c, "WORKERS")), int(env_value(c, "ORT_THREADS"))
    # 0 would mean "the cores the process sees": the node's, not the pod's.
    assert threads > 0
    assert quantity(c["resources"]["requests"]["cpu"]) == workers * threads


def test_pods_meet_the_restricted_pod_security_standard(objs: list[Manifest]) -> None:
    for owner, template in pod_templates(objs):
        spec = template["spec"]
        pod_sc = spec.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(flag), f"{owner}: {flag}"
        assert not any("hostPath" in v for v in spec.get("volumes", [])), f"{owner}: hostPath"
        for c in containers(spec):
            sc = c.get("securityContext", {})
            where = f"{owner}/{c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(uid, int) and uid >= 10000, f"{where}: numeric non-root UID"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert sc.get("readOnlyRootFilesystem") is True, where


def test_every_written_path_is_a_mounted_volume(objs: list[Manifest]) -> None:
    """Read-only root filesystem: what a process writes must be on a mount."""
    for owner, template in pod_templates(objs):
        spec = template["spec"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        used_by_pod = {m["name"] for c in containers(spec) for m in c.get("volumeMounts", [])}
        assert volumes <= used_by_pod, f"{owner}: unused volumes {volumes - used_by_pod}"
        for c in containers(spec):
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            used = {m["name"] for m in mounts.values()}
            assert used <= volumes, f"{owner}: mounts undefined volumes {used - volumes}"
            assert "/tmp" in mounts, f"{owner}: /tmp is not writable"
            for name in WRITABLE_PATH_ENV:
                if name not in env(c):
                    continue
                path = Path(env_value(c, name))
                assert any(path == Path(m) or Path(m) in path.parents for m in mounts), (
                    f"{owner}: {name}={path} is not on a writable mount"
                )
            # The shared store is BENTOML_HOME/models; the rest of BENTOML_HOME
            # (metric files BentoML wipes at start-up) stays per pod.
            home = env_value(c, "BENTOML_HOME")
            models = mounts.get(f"{home}/models")
            assert models is not None, f"{owner}: the model store is not mounted"
            claim = next(v for v in spec["volumes"] if v["name"] == models["name"])
            assert claim["persistentVolumeClaim"]["claimName"] == "selftune-models", owner
            assert "emptyDir" in next(
                v for v in spec["volumes"] if v["name"] == mounts[home]["name"]
            ), f"{owner}: BENTOML_HOME must be per pod"


def test_pods_drain_gracefully_and_roll_without_losing_capacity(objs: list[Manifest]) -> None:
    deployment = one(objs, "Deployment", "selftune")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = deployment["spec"]["template"]["spec"]
    for c in spec["containers"]:
        sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        longest_request = int(env_value(c, "REQUEST_TIMEOUT_S"))
        assert spec["terminationGracePeriodSeconds"] > sleep + longest_request


def test_container_environment_is_settings_the_service_accepts(
    objs: list[Manifest], tmp_path: Path
) -> None:
    """Every variable is a Settings field (or a known outside one), and the values parse."""
    fields = {name.upper() for name in Settings.model_fields}
    token_file = tmp_path / "admin-token"
    for owner, template in pod_templates(objs):
        for c in containers(template["spec"]):
            names = set(env(c))
            unknown = names - fields - set(NON_SETTINGS_ENV)
            assert not unknown, f"{owner}/{c['name']}: unknown variables {sorted(unknown)}"
            values: dict[str, Any] = {}
            for name, entry in env(c).items():
                if name.lower() in Settings.model_fields:
                    values[name.lower()] = entry.get("value", secrets.token_urlsafe(32))
            if "DATABASE_URL" in names:
                values["database_url"] = "postgresql+psycopg://u:p@db:5432/selftune"
            if "ADMIN_TOKEN_FILE" in names:  # the mounted Secret (test_manifests_references)
                token_file.write_text(secrets.token_urlsafe(32) + "\n")
                values["admin_token_file"] = str(token_file)
            # Cores are the node's, unknown here; the thread budget is checked above.
            Settings(**values, allow_oversubscription=True)


def test_images_are_pinned_per_overlay(rendered: dict[str, list[Manifest]]) -> None:
    def image(objs: list[Manifest], owner: str) -> str:
        template = dict(pod_templates(objs))[owner]
        return str(template["spec"]["containers"][0]["image"])

    for objs in rendered.values():
        for owner, template in pod_templates(objs):
            for c in containers(template["spec"]):
                repo, _, tag = c["image"].rpartition(":")
                assert "/" in repo and tag and tag != "latest", f"{owner}: {c['image']}"
    # the scaled bootstrap Job runs the training stack too.
    assert image(rendered["bootstrap"], "Job/selftune-bootstrap").endswith("-full")
    # single retrains in the pod: the image with the training stack.
    assert image(rendered["single"], "Deployment/selftune").endswith("-full")
    # scaled serves from the slim image and retrains in Jobs on the full one.
    assert image(rendered["scaled"], "Deployment/selftune").endswith("-serve")
    assert image(rendered["scaled"], "PodTemplate/selftune-retrain").endswith("-full")


def test_single_overlay_is_one_pod_on_sqlite_retraining_in_process(
    rendered: dict[str, list[Manifest]],
) -> None:
    objs = rendered["single"]
    deployment = one(objs, "Deployment", "selftune")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]
    c = server_container(objs)
    assert env_value(c, "RETRAIN_BACKEND") == "local"
    assert "DATABASE_URL" not in env(c), "single uses SQLite in STATE_DIR"
    state_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == env_value(c, "STATE_DIR"))
    state = next(v for v in pod["spec"]["volumes"] if v["name"] == state_mount["name"])
    claim = one(objs, "PersistentVolumeClaim", state["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not pod["spec"]["automountServiceAccountToken"]
    # A surge pod must share the node of the pod holding the ReadWriteOnce volumes.
    affinity = pod["spec"]["affinity"]["podAffinity"]
    term = affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"]["matchLabels"], pod["metadata"]["labels"])


def test_scaled_overlay_shares_postgres_and_storage_and_retrains_in_jobs(
    rendered: dict[str, list[Manifest]],
) -> None:
    objs = rendered["scaled"]
    c = server_container(objs)
    assert env_value(c, "RETRAIN_BACKEND") == "kubernetes"
    assert env_secret_key(c, "DATABASE_URL") == "database-url"
    assert env_value(c, "RETRAIN_POD_TEMPLATE") == "selftune-retrain"
    assert env(c)["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    models = one(objs, "PersistentVolumeClaim", "selftune-models")
    assert models["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = one(objs, "HorizontalPodAutoscaler", "selftune")
    assert hpa["spec"]["minReplicas"] >= 2
    assert server_pod_spec(objs)["automountServiceAccountToken"] is True
