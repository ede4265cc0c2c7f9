"""The monitoring component (k8s/components/monitoring): its alerts and its Grafana dashboard.

- The PrometheusRule's groups, as kustomize renders them, pass `promtool check
  rules` (PromQL, templates, lint), and so do the dashboard's queries, written as
  recording rules; `promtool test rules` (monitoring_alerts.promtool.yaml) fires
  each alert on the series that should fire it, after its `for`, and not on others.
  (The CRD schema check is test_manifests_schema's, with every other object.)
- Every alert waits (`for`), has a severity and says what to do.
- Every series an alert or a panel names is one a real `bentoml serve` of the
  tiny model exports on /metrics, after predictions, stored examples and a retrain
  job (labelled series only appear once used), and every label they match or group
  by is one of that series' labels or of the scrape's.
- The dashboard: valid JSON on a ${datasource} variable, unique panel ids, panels
  that tile the grid, a query in every target; its ConfigMap carries the sidecar's label.

promtool comes from `make deploy-tools` (Debian's prometheus package, the one
binary); without it these tests fail and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import K8S, OVERLAYS, Manifest, find_tool
from tests.deploy.manifests import kind, one, selects
from tests.helpers import AUTH, mixed_texts, read_examples, serve_copy

COMPONENT = K8S / "components" / "monitoring"
DASHBOARD = COMPONENT / "dashboard.json"
PROMTOOL_TESTS = Path(__file__).parent / "monitoring_alerts.promtool.yaml"
RULES_FILE = "selftune.rules.yaml"  # the name PROMTOOL_TESTS loads
INSTALL_PROMTOOL = "run `make deploy-tools` (takes promtool from Debian's prometheus package)"

# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
# Labels the ServiceMonitor's scrape adds to every series of a pod.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "endpoint", "container"}
SEVERITIES = {"critical", "warning"}
# Grafana's variables, replaced by values of their kind before promtool reads a query.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
# client-side `kubectl apply` keeps the object in an annotation, limited to 256 KiB.
MAX_CONFIGMAP_BYTES = 256 * 1024


# --- reading PromQL ------------------------------------------------------------------
# Every expression read here also passes promtool (the tests below), so a lexer
# suffices: with strings, durations and grouping clauses out of the way, an identifier
# that is not a keyword, an aggregation or a function call names a series.

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
KEYWORDS = AGGREGATIONS | {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan",
}  # fmt: skip
STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
RANGE = re.compile(r"\[[^\]]*\]")
OFFSET = re.compile(r"\boffset\s+-?\w+")
AT = re.compile(r"@\s*(?:start\(\)|end\(\)|[0-9.]+)")
NUMBER = re.compile(r"(?<![\w:.])(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)")
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?![a-zA-Z0-9_:]|\s*\()")
LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*$")


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it is used."""

    where: str
    expr: str


@dataclass
class Reading:
    series: set[str]
    # (series, label) for each label a selector matches on; None: a selector without name.
    matched: set[tuple[str | None, str]]
    grouped: set[str]  # labels named in by/without/on/ignoring/group_left/group_right


def read_promql(expr: str) -> Reading:
    text = GRAFANA_VARIABLE.sub("", GRAFANA_INTERVALS.sub("5m", expr))
    text = STRING.sub('""', text)
    grouped = {g.strip() for _, labels in GROUPING.findall(text) for g in labels.split(",")}
    text = GROUPING.sub(r" \1 ", text)
    matched = {
        (name or None, label)
        for name, matchers in SELECTOR.findall(text)
        for label in MATCHER_LABEL.findall(matchers)
    }
    text = SELECTOR.sub(r" \1 ", text)
    for pattern in (RANGE, OFFSET, AT, NUMBER):
        text = pattern.sub(" ", text)
    series = {m.group() for m in IDENTIFIER.finditer(text)} - KEYWORDS
    return Reading(series, matched, grouped - {""})


def test_the_promql_reader_finds_series_and_labels() -> None:
    reading = read_promql(
        'sum by (label) (rate(a_total{namespace="$namespace", x=~"5.."}[$__rate_interval]))'
        " / ignoring (label) group_left sum(rate(a_total[5m] offset 1h))"
        ' or histogram_quantile(0.99, sum by (le) (rate(b_bucket{le!="1e3"}[1m]))) > 1e-3'
        ' and on (pod) absent(up{job="by"} == 1) unless max without (x) (c) * 2 or d:rec'
    )
    assert reading.series == {"a_total", "b_bucket", "up", "c", "d:rec"}
    assert reading.matched == {("a_total", "namespace"), ("a_total", "x"),
                               ("b_bucket", "le"), ("up", "job")}  # fmt: skip
    assert reading.grouped == {"label", "le", "pod", "x"}


# --- what the component renders to ---------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_rule(rendered: dict[str, list[Manifest]]) -> Manifest:
    """The PrometheusRule as applied (the same in every overlay: one component)."""
    rules = [one(rendered[overlay], "PrometheusRule", "selftune") for overlay in OVERLAYS]
    assert all(r["spec"] == rules[0]["spec"] for r in rules)
    return rules[0]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def alerts(prometheus_rule: Manifest) -> list[Manifest]:
    return [r for g in prometheus_rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def rule_queries(prometheus_rule: Manifest) -> list[Query]:
    return [
        Query(f"{prometheus_rule['kind']} {r.get('alert') or r['record']}", str(r["expr"]))
        for g in prometheus_rule["spec"]["groups"]
        for r in g["rules"]
    ]


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    found = [
        Query(f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"])
        for p in panels(dashboard)
        for t in p.get("targets", [])
    ]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = LABEL_VALUES.match(query)
            assert match, f"variable {var['name']}: only label_values(...) queries are read here"
            if match.group(1):
                found.append(Query(f"variable {var['name']}", match.group(1)))
    return found


def promtool() -> str:
    return find_tool("promtool", INSTALL_PROMTOOL)


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --- the alerts ----------------------------------------------------------------------


def test_rule_groups_pass_promtool_check_rules(prometheus_rule: Manifest, tmp_path: Path) -> None:
    (tmp_path / RULES_FILE).write_text(
        yaml.safe_dump({"groups": prometheus_rule["spec"]["groups"]})
    )
    result = run_promtool("check", "rules", "--lint-fatal", RULES_FILE, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_when_and_only_when_they_should(
    prometheus_rule: Manifest, tmp_path: Path
) -> None:
    groups = json.loads(json.dumps(prometheus_rule["spec"]["groups"]))
    for rule in (r for g in groups for r in g["rules"]):
        rule.get("annotations", {}).pop("description", None)
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(PROMTOOL_TESTS, tmp_path)
    result = run_promtool("test", "rules", PROMTOOL_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test_that_fires_it(prometheus_rule: Manifest) -> None:
    cases = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    fired = {
        t["alertname"] for case in cases for t in case["alert_rule_test"] if t.get("exp_alerts")
    }
    assert {a["alert"] for a in alerts(prometheus_rule)} == fired


def test_every_alert_waits_has_a_severity_and_says_what_to_do(prometheus_rule: Manifest) -> None:
    names = [a["alert"] for a in alerts(prometheus_rule)]
    assert len(names) == len(set(names)), names
    for alert in alerts(prometheus_rule):
        name = alert["alert"]
        assert re.fullmatch(r"Selftune[A-Z][A-Za-z]+", name), name
        assert "for" in alert, f"{name}: no `for` (say 0m to fire at once)"
        assert alert["labels"]["severity"] in SEVERITIES, name
        notes = alert["annotations"]
        assert set(notes) >= {"summary", "description"}, name
        assert notes["summary"].strip().endswith("."), name
        # What to look at or do, not only what happened.
        assert len(notes["description"]) >= 200, f"{name}: description too thin to act on"


def test_the_job_label_is_the_scraped_services_name(
    prometheus_rule: Manifest, rendered: dict[str, list[Manifest]]
) -> None:
    """The ServiceMonitor makes the Service's name the `job` label (it sets no jobLabel)."""
    for overlay in OVERLAYS:
        monitor = one(rendered[overlay], "ServiceMonitor", "selftune")
        assert "jobLabel" not in monitor["spec"]
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = {
            s["metadata"]["name"]
            for s in kind(rendered[overlay], "Service")
            if selects(selector, s["metadata"]["labels"])
        }
        jobs = {
            m
            for q in rule_queries(prometheus_rule)
            for m in re.findall(r'\bjob\s*=\s*"([^"]*)"', q.expr)
        }
        assert jobs and jobs <= services, (overlay, jobs, services)


# --- the dashboard -------------------------------------------------------------------


def test_dashboard_queries_pass_promtool_as_recording_rules(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": GRAFANA_VARIABLE.sub("x", GRAFANA_INTERVALS.sub("5m", q.expr)),
        }
        for i, q in enumerate(dashboard_queries(dashboard))
    ]
    (tmp_path / "dashboard.rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = run_promtool("check", "rules", "dashboard.rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_a_datasource_variable_and_every_panel_a_query(
    dashboard: dict[str, Any],
) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels(dashboard):
        where = f"panel {panel['id']} {panel.get('title')!r}"
        if panel["type"] == "row":
            assert not panel.get("targets"), where
            continue
        assert panel.get("title") and panel.get("description"), where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where}: no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{where} target {target['refId']}: empty query"
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_panels_tile_the_grid(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], int] = {}
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                other = taken.setdefault((x, y), panel["id"])
                assert other == panel["id"], f"panels {other} and {panel['id']} overlap"


def test_dashboard_configmap_carries_the_sidecar_label(
    rendered: dict[str, list[Manifest]],
) -> None:
    for overlay in OVERLAYS:
        configmap = one(rendered[overlay], "ConfigMap", "selftune-dashboard")
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["data"] == {"selftune.json": DASHBOARD.read_text()}
        assert len(yaml.safe_dump(configmap).encode()) < MAX_CONFIGMAP_BYTES


# --- every name is one the service exports -------------------------------------------


@pytest.fixture(scope="module")
def exported(
    tiny_version: str,
    bentoml_home: Path,
    sentiment_csv: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, set[str]]:
    """{series name: its label names} from a real server's /metrics: the union of scrapes
    taken after predictions, then while a retrain job runs, then after it was cancelled,
    since a labelled series (`outcome`, `signal`, `label`...) appears only once used."""
    found: dict[str, set[str]] = {}

    def scrape(http: httpx.Client) -> None:
        for family in text_string_to_metric_families(http.get("/metrics").text):
            for sample in family.samples:
                found.setdefault(sample.name, set()).update(sample.labels)

    root = tmp_path_factory.mktemp("metrics-names")
    with (
        serve_copy(root, tiny_version, bentoml_home, {"RETRAIN_TIMEOUT_S": "120"}) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as http,
    ):
        texts = mixed_texts(96, seed=5)
        for i in range(0, len(texts), 8):
            assert http.post("/predict", json={"texts": texts[i : i + 8]}).status_code == 200
        assert http.get("/nope").status_code == 404
        rows = read_examples(sentiment_csv)[:60]
        assert http.post("/examples", json={"examples": rows}).status_code == 200
        started = http.post("/retrain", json={"mode": "refit", "epochs": 20})
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        deadline = time.monotonic() + 120
        cancelled = False
        while True:
            scrape(http)
            state = http.get(f"/jobs/{job_id}").json()["state"]
            if state == "running" and not cancelled:
                assert http.post(f"/jobs/{job_id}/cancel").status_code in (200, 409)
                cancelled = True
            # The worker that watched the job counts it once the training process exits.
            if state not in ("queued", "running") and "selftune_retrain_jobs_total" in found:
                break
            assert time.monotonic() < deadline, f"job {job_id} still {state}, or not counted"
            time.sleep(0.5)
    return found


def test_every_series_the_alerts_and_the_dashboard_name_is_exported(
    prometheus_rule: Manifest, dashboard: dict[str, Any], exported: dict[str, set[str]]
) -> None:
    missing: dict[str, list[str]] = {}
    wrong_labels: list[str] = []
    for query in rule_queries(prometheus_rule) + dashboard_queries(dashboard):
        reading = read_promql(query.expr)
        assert reading.series, f"{query.where}: names no series: {query.expr}"
        for name in reading.series - PROMETHEUS_SERIES:
            if name not in exported:
                missing.setdefault(name, []).append(query.where)
        known = TARGET_LABELS | {"le"}
        for name in reading.series:
            known |= exported.get(name, set())
        for name, label in reading.matched:
            if label not in (TARGET_LABELS | exported.get(name or "", known)):
                wrong_labels.append(f"{query.where}: {name}{{{label}=...}}")
        wrong_labels += [f"{query.where}: by/on ({g})" for g in reading.grouped - known]
    problems = [f"not on a real server's /metrics: {name} ({', '.join(where)})"
                for name, where in sorted(missing.items())]  # fmt: skip
    problems += [f"a label the series do not have: {wrong}" for wrong in wrong_labels]
    assert not problems, "\n".join(problems)
