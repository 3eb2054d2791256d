"""Monitoring artifacts (deploy/monitoring, deploy/prometheus, the monitoring component): alerts pass their promtool
unit tests (and those tests catch rules that never fire), every PromQL expression in rules, dashboard and
prometheus-adapter config parses with promtool and names only series the services or Triton export, the HPAs ask
for metrics the adapter serves, and the Grafana dashboard validates against Grafana's own dashboard schema.

The exported names come from the services' metric registry (importing their entry modules registers every metric)
and from a scrape of the real Triton fixture.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.prometheus import _SAMPLE

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "voice-serving.rules.yaml"
RULE_TESTS = MONITORING / "tests" / "voice-serving.test.yaml"
DASHBOARD = MONITORING / "grafana" / "voice-serving.json"
SCHEMAS = MONITORING / "grafana" / "schema"
ADAPTER = MONITORING / "prometheus-adapter" / "values.yaml"
COMPONENT = REPO / "deploy" / "k8s" / "components" / "monitoring"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)

# Grafana's variables, replaced by values Prometheus accepts so the expressions can be parsed.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", '"$voice"': '".*"'}
PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"offset", "inf", "nan"}
# Series Prometheus itself makes for every target.
PROMETHEUS_SERIES = {"up"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_expressions() -> Iterator[tuple[str, str]]:
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            yield f"panel {panel['title']} {target['refId']}", expr


def adapter_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = load_yaml(ADAPTER)["rules"]["custom"]
    return rules


def adapter_expressions() -> Iterator[tuple[str, str]]:
    for rule in adapter_rules():
        series = metric_names(rule["seriesQuery"])
        assert len(series) == 1, rule["seriesQuery"]
        (name,) = series
        yield f"adapter seriesQuery {name}", rule["seriesQuery"]
        # The adapter's templates, filled as it fills them for one pod of one namespace.
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", name)
            .replace("<<.LabelMatchers>>", 'namespace="voice-serving",pod="p"')
            .replace("<<.GroupBy>>", "pod")
        )
        yield f"adapter metricsQuery {rule['name']['as']}", query


def all_expressions() -> list[tuple[str, str]]:
    return [*rule_expressions(), *dashboard_expressions(), *adapter_expressions()]


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects: identifiers that are not functions, keywords, label names (inside
    braces or grouping clauses), durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent or unit of a number, e.g. 1e6
        names.add(word)
    return names


def test_metric_name_extraction_finds_selectors_only() -> None:
    expr = (
        'sum by (voice, le) (rate(a_bucket{voice=~"x|y", code!="OK"}[5m])) / ignoring (code) group_left '
        "max without (pod) (b) > 1e3 and on (voice) c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


@pytest.fixture(scope="module")
def service_series() -> set[str]:
    """Every series name the gateway and the conversion service can export, by metric type."""
    from prometheus_client import REGISTRY

    import services.rvc_service.__main__
    import services.tts_gateway.app  # noqa: F401  (registers the gateway's metrics)

    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("_count", "_sum", ""),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    assert {"tts_gateway_active_streams", "rvc_pool_queue_depth", "grpc_server_handled_total"} <= names
    return names


@pytest.fixture(scope="module")
def triton_series(triton_server: Any) -> set[str]:
    names = set()
    for line in triton_server.metrics().splitlines():
        match = _SAMPLE.match(line)
        if match:
            names.add(match.group(1))
    assert "nv_inference_request_success" in names
    return names


@needs_promtool
def test_prometheus_config_checks() -> None:
    done = promtool("check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_alert_rules_check() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {sum(1 for _ in rule_expressions())} rules found" in done.stdout


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def alerts_expected(firing: bool) -> set[str]:
    found = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            if bool(check.get("exp_alerts")) == firing:
                found.add(check["alertname"])
    return found


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {name.removeprefix("rule ") for name, _ in rule_expressions()}
    assert alerts_expected(firing=True) == alerts
    assert alerts_expected(firing=False) == alerts


@needs_promtool
def test_alert_unit_tests_catch_rules_that_never_fire(tmp_path: Path) -> None:
    """The unit tests are not vacuous: with every expression replaced by one that is never true, each alert with a
    firing expectation fails."""
    rules = load_yaml(RULES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = "vector(1) == 0"
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(rules))
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    done = promtool("test", "rules", str(tmp_path / "tests" / RULE_TESTS.name))
    assert done.returncode != 0
    failed = set(re.findall(r"alertname: (\w+)", done.stdout + done.stderr))
    assert failed == alerts_expected(firing=True)


def test_prometheusrule_carries_the_same_groups_as_the_rule_file() -> None:
    (rule,) = [d for d in yaml.safe_load_all((COMPONENT / "prometheusrule.yaml").read_text()) if d]
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"]


@needs_promtool
def test_every_promql_expression_parses(tmp_path: Path) -> None:
    """Rules, dashboard queries and adapter queries, written as recording rules so promtool's parser reads them."""
    expressions = all_expressions()
    assert len(expressions) > 30
    records = [{"record": f"check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(expressions)]
    path = tmp_path / "expressions.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "expressions", "rules": records}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_expression_check_rejects_a_broken_query(tmp_path: Path) -> None:
    path = tmp_path / "broken.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum by (le (x)"}]}]}))
    assert promtool("check", "rules", str(path)).returncode != 0


def test_expressions_name_only_exported_series(service_series: set[str], triton_series: set[str]) -> None:
    exported = service_series | triton_series | PROMETHEUS_SERIES
    missing = {}
    for where, expr in all_expressions():
        names = metric_names(expr)
        assert names or "absent(" in expr or "vector(" in expr, f"{where}: no series found in {expr}"
        unknown = names - exported
        if unknown:
            missing[where] = sorted(unknown)
    assert not missing, missing
    # The dashboard's voice variable reads its values from a real series too.
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    for variable in variables:
        if variable["type"] == "query":
            metric = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"])
            assert metric and metric.group(1) in exported, variable["query"]


def test_hpa_metrics_are_served_by_the_adapter() -> None:
    served = {rule["name"]["as"] for rule in adapter_rules()}
    hpas = [d for d in yaml.safe_load_all((COMPONENT / "hpa.yaml").read_text()) if d]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == {"tts-gateway", "rvc-service"}
    for hpa in hpas:
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] == "Pods"
            assert metric["pods"]["metric"]["name"] in served, metric
    for rule in adapter_rules():
        # The adapter maps the pod and namespace labels onto Kubernetes objects: both must be there.
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert re.fullmatch(rule["name"]["matches"], next(iter(metric_names(rule["seriesQuery"]))))


def load_schema(name: str, definition: str | None = None) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text())
    if definition is not None:
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft7Validator(schema)


def errors(validator: jsonschema.Draft7Validator, instance: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(instance)]


def test_dashboard_validates_against_grafanas_schema() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert errors(load_schema("dashboard"), dashboard) == []
    query = load_schema("prometheus")
    panel_schemas = {t: (load_schema(t, "Options"), t == "timeseries") for t in ("timeseries", "stat")}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["type"] in panel_schemas, f"no schema vendored for panel type {panel['type']}"
        options, has_custom = panel_schemas[panel["type"]]
        assert errors(options, panel["options"]) == [], panel["title"]
        if has_custom:
            custom = load_schema(panel["type"], "FieldConfig")
            assert errors(custom, panel["fieldConfig"]["defaults"].get("custom", {})) == [], panel["title"]
        for target in panel["targets"]:
            assert errors(query, target) == [], (panel["title"], target["refId"])
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_dashboard_schema_rejects_a_misspelt_field() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][1]["gridpos"] = dashboard["panels"][1].pop("gridPos")
    assert errors(load_schema("dashboard"), dashboard)


def test_dashboard_layout_and_coverage() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for series in (
        "tts_gateway_time_to_first_audio_seconds_bucket",
        "tts_gateway_real_time_factor_bucket",
        "tts_gateway_active_streams",
        "rvc_pool_queue_depth",
        "grpc_server_handled_total",
        "tts_gateway_streams_total",
        "nv_inference_request_success",
        "nv_inference_queue_duration_us",
    ):
        assert series in exprs, f"the dashboard does not show {series}"
    assert re.search(r"histogram_quantile\(0\.5, [^\n]*time_to_first_audio", exprs)
    assert re.search(r"histogram_quantile\(0\.99, [^\n]*time_to_first_audio", exprs)
    assert "by (grpc_service, grpc_code)" in exprs and "by (voice)" in exprs
