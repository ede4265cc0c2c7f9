"""The Kubernetes manifests, rendered per overlay: objects that refer to each other agree.

The cross-object facts no schema knows: selectors that select something,
ports, ServiceAccounts, claims and Secret keys that exist, a network policy
over every pod, and the retrain launcher's Role bound to the server alone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import yaml

from service.guards import ADMIN_PREFIXES, DOCS_ROUTE
from tests.deploy.conftest import K8S, Manifest
from tests.deploy.manifests import (
    containers,
    kind,
    label_selector_selects,
    one,
    pod_labels,
    pod_templates,
    ports_of,
    ref,
    selects,
    server_pod_spec,
)
from tests.fake_k8s import fake_kubernetes
from tests.runner.test_k8s import a_job, backend_for


def test_every_pod_is_covered_by_a_network_policy(objs: list[Manifest]) -> None:
    policies = [p["spec"]["podSelector"] for p in kind(objs, "NetworkPolicy")]
    for owner, labels in pod_labels(objs):
        assert any(label_selector_selects(p, labels) for p in policies), f"{owner}: no policy"


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
                known = ports_of(t["spec"]["containers"])
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
                    known = ports_of(containers(t["spec"]))
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
        for volume in template["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == secret_template["metadata"]["name"]
                for item in volume["secret"]["items"]:
                    assert item["key"] in keys, f"{owner}: key {item['key']}"


def test_the_admin_token_file_is_the_mounted_secret_key(objs: list[Manifest]) -> None:
    """ADMIN_TOKEN_FILE names the file the Secret volume puts there, read-only."""
    spec = server_pod_spec(objs)
    [server] = [c for c in containers(spec) if c["name"] == "server"]
    path = next(e["value"] for e in server["env"] if e["name"] == "ADMIN_TOKEN_FILE")
    assert not [e for e in server["env"] if e["name"] == "ADMIN_TOKEN"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounted = {
        f"{m['mountPath']}/{item['path']}": (m, item["key"])
        for m in server["volumeMounts"]
        if "secret" in volumes[m["name"]]
        for item in volumes[m["name"]]["secret"]["items"]
    }
    mount, key = mounted[path]
    assert key == "admin-token" and mount["readOnly"] is True


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
        (("batch",), ("jobs",), ()): {"create", "get", "delete"},
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


def api_verb(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, str]:
    """(resource, RBAC verb) of one request the API server saw."""
    parts = urlsplit(path).path.strip("/").split("/")
    # /api/v1/namespaces/NS/RESOURCE[/NAME] or /apis/GROUP/VERSION/namespaces/NS/RESOURCE[/NAME]
    rest = parts[parts.index("namespaces") + 2 :]
    resource, named = rest[0], len(rest) > 1
    if method == "GET":
        verb = "watch" if query.get("watch") else ("get" if named else "list")
    else:
        verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}[method]
    return resource, verb


def test_the_launcher_role_grants_exactly_what_the_backend_calls(
    rendered: dict[str, list[Manifest]],
) -> None:
    """A retrain's whole life (launch, follow, cancel) against the API, verb by verb."""
    objs = rendered["scaled"]
    with fake_kubernetes() as fake:
        fake.add_podtemplate(one(objs, "PodTemplate", "selftune-retrain"))
        job = backend_for(fake).launch(a_job())
        job.exit_code()
        job.kill()
        used: dict[str, set[str]] = {}
        for request in fake.requests:
            resource, verb = api_verb(request.method, request.path, request.query)
            used.setdefault(resource, set()).add(verb)
    granted = {
        resource: set(rule["verbs"])
        for rule in one(objs, "Role", "selftune-retrain-launcher")["rules"]
        for resource in rule["resources"]
    }
    assert used == granted


def test_the_namespace_enforces_the_restricted_pod_security_standard(
    rendered: dict[str, list[Manifest]],
) -> None:
    namespace = yaml.safe_load((K8S / "namespace.yaml").read_text())
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    deployed = {o["metadata"].get("namespace") for objs in rendered.values() for o in objs}
    assert deployed - {None} == {namespace["metadata"]["name"]}


def ingress_routes(ingress: Manifest, path: str) -> bool:
    for rule in ingress["spec"]["rules"]:
        for route in rule["http"]["paths"]:
            prefix = route["path"].rstrip("/")
            if route["path"] == path or (
                route["pathType"] == "Prefix" and path.startswith(prefix + "/")
            ):
                return True
    return False


def test_named_sources_reach_the_port_and_only_prediction_paths_are_published(
    rendered: dict[str, list[Manifest]],
) -> None:
    """Admin, metrics and predict share one port: the policy names who, the Ingress which paths."""
    objs = rendered["scaled+named-sources"]
    policy = one(objs, "NetworkPolicy", "selftune-server")
    assert policy["spec"]["ingress"], "an empty ingress list admits nobody"
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "a rule without `from` admits every source"
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector", "podSelector"}, peer
            assert peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            assert peer["podSelector"]["matchLabels"]
    ingress = one(objs, "Ingress", "selftune")
    for path in (*ADMIN_PREFIXES, "/metrics", DOCS_ROUTE, "/readyz", "/jobs/1"):
        assert not ingress_routes(ingress, path), f"{path} is published"
    for path in ("/predict", "/", "/v2/models/text-classifier/infer"):
        assert ingress_routes(ingress, path), f"{path} is not published"
    ports = {p["name"] for p in one(objs, "Service", "selftune")["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for route in rule["http"]["paths"]:
            assert route["backend"]["service"]["name"] == "selftune"
            assert route["backend"]["service"]["port"]["name"] in ports
