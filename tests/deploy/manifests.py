"""Reading rendered manifests: lookups, pod templates, selectors, env and quantities.

Plain helpers shared by the test_manifests_* modules (their fixtures, `overlay`,
`objs` and `rendered`, are in conftest.py), and by the kubernetes retrain
backend's tests, which check that it builds the Job `build_retrain_job` describes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal

from tests.deploy.conftest import Manifest

POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "PodTemplate"}
RETRAIN_JOB_NAME_PREFIX = "selftune-retrain-"


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


def env_secret_key(container: Manifest, name: str) -> str:
    """The Secret key an environment variable is read from."""
    return str(env(container)[name]["valueFrom"]["secretKeyRef"]["key"])


def server_pod_spec(objs: list[Manifest]) -> Manifest:
    return one(objs, "Deployment", "selftune")["spec"]["template"]["spec"]


def server_container(objs: list[Manifest]) -> Manifest:
    return next(c for c in server_pod_spec(objs)["containers"])


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


def ports_of(pod_containers: Iterable[Manifest]) -> set[str | int]:
    """Every port name and number the given containers declare."""
    return set().union(*(port_names_and_numbers(c) for c in pod_containers))


def build_retrain_job(
    podtemplate: Manifest, job_id: str, timeout_s: int, settings_env: dict[str, str]
) -> Manifest:
    """The Job the kubernetes retrain backend makes from the PodTemplate (its documented shape).

    `settings_env`: the server's retrain settings, set in every container after the rest.
    """
    template = json.loads(json.dumps(podtemplate["template"]))
    for container in template["spec"]["containers"]:
        env = [e for e in container.get("env", []) if e["name"] not in settings_env]
        for entry in env:
            if entry["name"] == "JOB_ID":
                entry["value"] = job_id
        container["env"] = env + [{"name": k, "value": v} for k, v in settings_env.items()]
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
