"""The Kubernetes manifests, rendered per overlay and checked offline.

Two layers: every object validates strictly against the Kubernetes API schema
(kubernetes-validate, the library behind its --strict CLI; a kind without a
schema fails), and the cross-object facts no schema knows: selectors that
select something, ports and volumes that exist, requests within limits, the
restricted Pod Security profile, and what each overlay promises.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from service.settings import Settings
from tests.deploy.conftest import OVERLAYS, Manifest

SCHEMAS = Path(__file__).parent / "schemas"

# The oldest Kubernetes these manifests support (the preStop `sleep` action is
# on by default from 1.30) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.33.0", "1.37.0")

# CRDs, for which kubernetes-validate has no schema (it would only warn): each
# is validated against a strict schema of our own instead. Any other kind
# without a schema fails.
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS / "servicemonitor.json"}

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

POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "PodTemplate"}
RETRAIN_COMMAND = ["python", "-m", "training", "retrain", "--job-id", "$(JOB_ID)"]
RETRAIN_JOB_NAME_PREFIX = "selftune-retrain-"

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --------------------------------------------------------------------- helpers


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objs(overlay: str, rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    """What one deployment applies: the overlay, and for scaled its bootstrap Job."""
    if overlay == "scaled":
        return rendered["scaled"] + rendered["bootstrap"]
    return rendered[overlay]


def kind(objs: list[Manifest], name: str) -> list[Manifest]:
    return [o for o in objs if o["kind"] == name]


def one(objs: list[Manifest], kind_name: str, name: str) -> Manifest:
    found = [o for o in kind(objs, kind_name) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind_name}/{name}, found {len(found)}"
    return found[0]


def ref(obj: Manifest) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_templates(objs: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(owner, pod template) for every object that makes pods."""
    for obj in objs:
        if obj["kind"] == "PodTemplate":
            yield ref(obj), obj["template"]
        elif obj["kind"] in POD_OWNERS:
            yield ref(obj), obj["spec"]["template"]


def containers(pod_spec: Manifest) -> list[Manifest]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def label_selector_selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and In/NotIn/Exists expressions) against pod labels."""
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def pod_labels(objs: list[Manifest]) -> list[tuple[str, dict[str, str]]]:
    return [(owner, t["metadata"].get("labels", {})) for owner, t in pod_templates(objs)]


def env(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: Manifest, name: str) -> str:
    entry = env(container).get(name)
    assert entry is not None and "value" in entry, f"{container['name']}: {name} has no value"
    return str(entry["value"])


def server_container(objs: list[Manifest]) -> Manifest:
    deployment = one(objs, "Deployment", "selftune")
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"])


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource quantity as a number (cores, or bytes)."""
    text = str(value)
    suffixes = {
        "m": Decimal("0.001"),
        "k": Decimal(10**3),
        "M": Decimal(10**6),
        "G": Decimal(10**9),
        "Ki": Decimal(2**10),
        "Mi": Decimal(2**20),
        "Gi": Decimal(2**30),
        "Ti": Decimal(2**40),
    }
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match and match.group(2) in {"", *suffixes}, f"unreadable quantity {text!r}"
    return Decimal(match.group(1)) * suffixes.get(match.group(2), Decimal(1))


def port_names_and_numbers(container: Manifest) -> set[str | int]:
    ports = container.get("ports", [])
    return {p["containerPort"] for p in ports} | {p["name"] for p in ports if "name" in p}


def build_retrain_job(podtemplate: Manifest, job_id: str, timeout_s: int) -> Manifest:
    """The Job the kubernetes retrain backend makes from the PodTemplate (its documented shape)."""
    template = json.loads(json.dumps(podtemplate["template"]))
    for container in template["spec"]["containers"]:
        for entry in container.get("env", []):
            if entry["name"] == "JOB_ID":
                entry["value"] = job_id
    labels = {**podtemplate["metadata"]["labels"], "selftune.io/job-id": job_id}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": RETRAIN_JOB_NAME_PREFIX + job_id,
            "namespace": podtemplate["metadata"]["namespace"],
            "labels": labels,
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": timeout_s,
            "ttlSecondsAfterFinished": 86400,
            "template": template,
        },
    }


def validate_strictly(obj: Manifest, where: str) -> None:
    crd_schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd_schema is not None:
        schema = json.loads(crd_schema.read_text())
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(obj), key=str)
        assert not errors, f"{where} {ref(obj)}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors
        )
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(
                f"{where} {ref(obj)}: no schema for {obj['apiVersion']} {obj['kind']} in "
                f"Kubernetes {version} (removed or misspelt API version?); a CRD needs an "
                "entry in CRD_SCHEMAS"
            )
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} {ref(obj)} invalid for Kubernetes {version}: {path}: {exc}")


# ------------------------------------------------------------ schema validity


def test_every_rendered_object_validates_strictly(overlay: str, objs: list[Manifest]) -> None:
    for obj in objs:
        validate_strictly(obj, overlay)


def test_single_bootstraps_the_model_store_before_serving(
    rendered: dict[str, list[Manifest]],
) -> None:
    spec = one(rendered["single"], "Deployment", "selftune")["spec"]["template"]["spec"]
    [init] = spec["initContainers"]
    assert init["command"] == ["python", "-m", "service.bootstrap"]
    assert init["image"] == spec["containers"][0]["image"]
    job = one(rendered["bootstrap"], "Job", "selftune-bootstrap")
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == init["command"]


def test_secret_template_validates_strictly(secret_template: Manifest) -> None:
    validate_strictly(secret_template, "k8s/secret.example.yaml")


def test_retrain_job_made_from_the_pod_template_validates_as_a_job(
    rendered: dict[str, list[Manifest]],
) -> None:
    podtemplate = one(rendered["scaled"], "PodTemplate", "selftune-retrain")
    # Job names end up in the pods' job-name label: 63 characters at most.
    job = build_retrain_job(podtemplate, "0" * 36, timeout_s=3600)
    assert len(job["metadata"]["name"]) <= 63
    validate_strictly(job, "scaled (Job built from the PodTemplate)")


def test_overlays_contain_what_they_promise(rendered: dict[str, list[Manifest]]) -> None:
    kinds = {overlay: sorted(ref(o) for o in objs) for overlay, objs in rendered.items()}
    common = {
        "Deployment/selftune",
        "Service/selftune",
        "PodDisruptionBudget/selftune",
        "NetworkPolicy/selftune-server",
        "ServiceMonitor/selftune",
        "ServiceAccount/selftune",
        "PersistentVolumeClaim/selftune-models",
    }
    assert set(kinds["single"]) == common | {"PersistentVolumeClaim/selftune-state"}
    assert set(kinds["bootstrap"]) == {"Job/selftune-bootstrap"}
    assert set(kinds["scaled"]) == common | {
        "HorizontalPodAutoscaler/selftune",
        "Role/selftune-retrain-launcher",
        "RoleBinding/selftune-retrain-launcher",
        "ServiceAccount/selftune-retrain",
        "PodTemplate/selftune-retrain",
        "NetworkPolicy/selftune-retrain",
    }


# ------------------------------------------------------------ names and refs


def test_names_are_valid_and_unique(objs: list[Manifest]) -> None:
    seen = set()
    for obj in objs:
        name = obj["metadata"]["name"]
        assert ref(obj) not in seen, f"duplicate {ref(obj)}"
        seen.add(ref(obj))
        assert len(name) <= 253 and DNS1123_SUBDOMAIN.match(name), f"{ref(obj)}: bad name"
        assert DNS1123_LABEL.match(obj["metadata"].get("namespace", "")), f"{ref(obj)}: namespace"
        if obj["kind"] == "Service":
            assert len(name) <= 63 and DNS1035_LABEL.match(name), f"{ref(obj)}: not DNS-1035"
    for owner, template in pod_templates(objs):
        spec = template["spec"]
        for c in containers(spec):
            assert len(c["name"]) <= 63 and DNS1123_LABEL.match(c["name"]), owner
            for port in c.get("ports", []):
                assert len(port["name"]) <= 15 and IANA_SVC_NAME.match(port["name"]), owner
        for volume in spec.get("volumes", []):
            assert len(volume["name"]) <= 63 and DNS1123_LABEL.match(volume["name"]), owner


def test_every_pod_is_covered_by_a_network_policy(objs: list[Manifest]) -> None:
    policies = [p["spec"]["podSelector"] for p in kind(objs, "NetworkPolicy")]
    for owner, labels in pod_labels(objs):
        assert any(label_selector_selects(p, labels) for p in policies), f"{owner}: no policy"


def test_batch_pods_run_once_and_jobs_are_bounded(objs: list[Manifest]) -> None:
    for owner, template in pod_templates(objs):
        if owner.startswith(("Job/", "PodTemplate/")):
            # Jobs allow only Never or OnFailure; a failed run is recorded, not restarted.
            assert template["spec"]["restartPolicy"] == "Never", owner
    for job in kind(objs, "Job"):
        spec = job["spec"]
        assert spec["backoffLimit"] == 0, ref(job)
        assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0


def test_workload_selectors_match_their_pod_labels(objs: list[Manifest]) -> None:
    for obj in kind(objs, "Deployment"):
        selector = obj["spec"]["selector"]["matchLabels"]
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert selects(selector, labels), f"{ref(obj)}: selector {selector} misses its pods"


def test_server_and_retrain_pods_are_told_apart(objs: list[Manifest]) -> None:
    """A Service or PDB that selects server pods must never also select training pods."""
    retrain = [
        labels for owner, labels in pod_labels(objs) if owner.startswith(("PodTemplate/", "Job/"))
    ]
    for obj in kind(objs, "Service") + kind(objs, "PodDisruptionBudget"):
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert not any(selects(selector, labels) for labels in retrain), ref(obj)


def test_services_select_pods_and_target_existing_ports(objs: list[Manifest]) -> None:
    for svc in kind(objs, "Service"):
        targets = [
            t
            for _, t in pod_templates(objs)
            if selects(svc["spec"]["selector"], t["metadata"].get("labels", {}))
        ]
        assert targets, f"{ref(svc)} selects no pods"
        for port in svc["spec"]["ports"]:
            for t in targets:
                known = set().union(*(port_names_and_numbers(c) for c in t["spec"]["containers"]))
                assert port["targetPort"] in known, f"{ref(svc)}: no port {port['targetPort']}"


def test_disruption_budgets_select_pods(objs: list[Manifest]) -> None:
    for pdb in kind(objs, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selects(selector, labels) for _, labels in pod_labels(objs)), ref(pdb)


def test_autoscalers_target_a_deployment_that_leaves_replicas_to_them(
    objs: list[Manifest],
) -> None:
    for hpa in kind(objs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        deployment = one(objs, target["kind"], target["name"])
        # `kubectl apply` would reset the HPA's count on every deploy.
        assert "replicas" not in deployment["spec"], f"{ref(deployment)} sets replicas"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            # CPU utilization is measured against the request.
            assert "cpu" in c["resources"]["requests"], f"{ref(deployment)}: no CPU request"


def test_network_policies_select_pods_and_name_existing_ports(objs: list[Manifest]) -> None:
    for policy in kind(objs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        targets = [
            t
            for _, t in pod_templates(objs)
            if label_selector_selects(selector, t["metadata"]["labels"])
        ]
        assert targets, f"{ref(policy)} selects no pods"
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, ref(policy)
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                for t in targets:
                    known = set().union(*(port_names_and_numbers(c) for c in containers(t["spec"])))
                    assert port["port"] in known, f"{ref(policy)}: no port {port['port']}"


def test_service_monitor_scrapes_a_named_service_port(objs: list[Manifest]) -> None:
    for monitor in kind(objs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in kind(objs, "Service") if selects(selector, s["metadata"]["labels"])]
        assert services, f"{ref(monitor)} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"] == "/metrics"
            for svc in services:
                names = {p.get("name") for p in svc["spec"]["ports"]}
                assert endpoint["port"] in names, f"{ref(monitor)}: {ref(svc)} has no port"


def test_service_accounts_and_claims_referenced_by_pods_exist(objs: list[Manifest]) -> None:
    accounts = {o["metadata"]["name"] for o in kind(objs, "ServiceAccount")}
    claims = {o["metadata"]["name"] for o in kind(objs, "PersistentVolumeClaim")}
    for owner, template in pod_templates(objs):
        spec = template["spec"]
        assert spec["serviceAccountName"] in accounts, f"{owner}: no ServiceAccount"
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, owner


def test_secret_references_exist_in_the_secret_template(
    objs: list[Manifest], secret_template: Manifest
) -> None:
    keys = set(secret_template["stringData"])
    for owner, template in pod_templates(objs):
        for c in containers(template["spec"]):
            for entry in c.get("env", []):
                secret_ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if secret_ref:
                    assert secret_ref["name"] == secret_template["metadata"]["name"], owner
                    assert secret_ref["key"] in keys, f"{owner}: key {secret_ref['key']}"


def test_checkov_skips_carry_a_reason_checkov_can_read(objs: list[Manifest]) -> None:
    for obj in objs:
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), f"{ref(obj)}: {value}"
                # checkov splits on "=": a second one crashes its kubernetes runner.
                assert len(reason) > 20 and "=" not in reason, f"{ref(obj)}: {key}"


# ------------------------------------------------------------------ the pods


def test_probes_hit_the_bentoml_health_endpoints_on_existing_ports(objs: list[Manifest]) -> None:
    deployment = one(objs, "Deployment", "selftune")
    for c in deployment["spec"]["template"]["spec"]["containers"]:
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
    """WORKERS x ORT_THREADS cores are requested (shared/DESIGN.md #2)."""
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
        for c in containers(spec):
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            used = {m["name"] for m in mounts.values()}
            assert used <= volumes, f"{owner}: mounts undefined volumes {used - volumes}"
            assert volumes <= used, f"{owner}: unused volumes {volumes - used}"
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


def test_container_environment_is_settings_the_service_accepts(objs: list[Manifest]) -> None:
    """Every variable is a Settings field (or a known outside one), and the values parse."""
    fields = {name.upper() for name in Settings.model_fields}
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
    bootstrap = one(rendered["bootstrap"], "Job", "selftune-bootstrap")
    assert bootstrap["spec"]["template"]["spec"]["containers"][0]["image"].endswith("-full")
    # single retrains in the pod: the image with the training stack.
    assert image(rendered["single"], "Deployment/selftune").endswith("-full")
    # scaled serves from the slim image and retrains in Jobs on the full one.
    assert image(rendered["scaled"], "Deployment/selftune").endswith("-serve")
    assert image(rendered["scaled"], "PodTemplate/selftune-retrain").endswith("-full")


# ------------------------------------------------------------- each overlay


def test_single_overlay_is_one_pod_on_sqlite_retraining_in_process(
    rendered: dict[str, list[Manifest]],
) -> None:
    objs = rendered["single"]
    deployment = one(objs, "Deployment", "selftune")
    assert deployment["spec"]["replicas"] == 1
    c = server_container(objs)
    assert env_value(c, "RETRAIN_BACKEND") == "local"
    assert "DATABASE_URL" not in env(c), "single uses SQLite in STATE_DIR"
    state_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == env_value(c, "STATE_DIR"))
    state = next(
        v
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if v["name"] == state_mount["name"]
    )
    claim = one(objs, "PersistentVolumeClaim", state["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not deployment["spec"]["template"]["spec"]["automountServiceAccountToken"]
    # A surge pod must share the node of the pod holding the ReadWriteOnce volumes.
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    term = affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(
        term["labelSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )


def test_scaled_overlay_shares_postgres_and_storage_and_retrains_in_jobs(
    rendered: dict[str, list[Manifest]],
) -> None:
    objs = rendered["scaled"]
    c = server_container(objs)
    assert env_value(c, "RETRAIN_BACKEND") == "kubernetes"
    assert env(c)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "database-url"
    assert env_value(c, "RETRAIN_POD_TEMPLATE") == "selftune-retrain"
    assert env(c)["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    models = one(objs, "PersistentVolumeClaim", "selftune-models")
    assert models["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = one(objs, "HorizontalPodAutoscaler", "selftune")
    assert hpa["spec"]["minReplicas"] >= 2
    deployment = one(objs, "Deployment", "selftune")
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


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
    assert env(c)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "database-url"
    server = server_container(objs)
    assert env_value(c, "BENTOML_HOME") == env_value(server, "BENTOML_HOME")
    assert env_value(c, "MODEL_NAME") == env_value(server, "MODEL_NAME")


def test_retrain_role_allows_exactly_what_the_backend_needs(
    rendered: dict[str, list[Manifest]],
) -> None:
    objs = rendered["scaled"]
    role = one(objs, "Role", "selftune-retrain-launcher")
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ()))): set(
            r["verbs"]
        )
        for r in role["rules"]
    }
    assert rules == {
        (("batch",), ("jobs",), ()): {"create", "get", "list", "watch", "delete"},
        (("",), ("podtemplates",), ("selftune-retrain",)): {"get"},
    }
    binding = one(objs, "RoleBinding", "selftune-retrain-launcher")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "selftune-retrain-launcher",
    }
    deployment = one(objs, "Deployment", "selftune")
    [subject] = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"
    assert subject["name"] == deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert subject["namespace"] == deployment["metadata"]["namespace"]
    assert not kind(objs, "ClusterRole") and not kind(objs, "ClusterRoleBinding")
