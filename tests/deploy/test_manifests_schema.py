"""The Kubernetes manifests, rendered per overlay: every object a valid API object.

Every object validates strictly against the Kubernetes API schema
(kubernetes-validate, the library behind its --strict CLI; a kind without a
schema fails), CRDs against strict schemas of our own; names follow the API's
naming rules, and each overlay renders exactly the objects it promises.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from runner.k8s import forwarded_settings
from service.settings import Settings
from tests.deploy.conftest import K8S, Manifest
from tests.deploy.manifests import build_retrain_job, containers, one, pod_templates, ref

SCHEMAS = Path(__file__).parent / "schemas"

# The oldest Kubernetes these manifests support (the preStop `sleep` action is
# on by default from 1.30) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.33.0", "1.37.0")

# CRDs, for which kubernetes-validate has no schema (it would only warn): each
# is validated against a strict schema of our own instead. Any other kind
# without a schema fails.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS / "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "prometheusrule.json",
}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


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


def test_every_rendered_object_validates_strictly(overlay: str, objs: list[Manifest]) -> None:
    for obj in objs:
        validate_strictly(obj, overlay)


def test_secret_template_validates_strictly(secret_template: Manifest) -> None:
    validate_strictly(secret_template, "k8s/secret.example.yaml")


def test_namespace_validates_strictly() -> None:
    validate_strictly(yaml.safe_load((K8S / "namespace.yaml").read_text()), "k8s/namespace.yaml")


def test_retrain_job_made_from_the_pod_template_validates_as_a_job(
    rendered: dict[str, list[Manifest]],
) -> None:
    podtemplate = one(rendered["scaled"], "PodTemplate", "selftune-retrain")
    # Job names end up in the pods' job-name label: 63 characters at most.
    job = build_retrain_job(
        podtemplate, "0" * 36, timeout_s=3600, settings_env=forwarded_settings(Settings())
    )
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
        "PrometheusRule/selftune",
        "ConfigMap/selftune-dashboard",
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


def test_checkov_skips_carry_a_reason_checkov_can_read(objs: list[Manifest]) -> None:
    for obj in objs:
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), f"{ref(obj)}: {value}"
                # checkov splits on "=": a second one crashes its kubernetes runner.
                assert len(reason) > 20 and "=" not in reason, f"{ref(obj)}: {key}"
