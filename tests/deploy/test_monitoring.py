"""The monitoring files: the alert rules pass ``promtool check rules`` and the chart carries an identical copy; the
Grafana dashboard parses, its queries are valid PromQL (promtool checks them as recording rules), it has the
panels operations need; and every metric the dashboard and the alerts query is one a LIVE service exports (a real
service started with the API tests' helpers, after a copilot suggestion and a started session, scraped over HTTP)
or one of an explicit allow-list from other exporters."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.runtime.bus.broker import EmbeddedBroker
from tests.api.conftest import drive_traffic, serve, start_service
from tests.deploy.conftest import CHART, DEPLOY

pytestmark = pytest.mark.integration

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
CHART_ALERTS = CHART / "files" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "bpm-autopilot.json"

# Metrics other exporters provide: Prometheus' own scrape health and kube-state-metrics' Job status.
OTHER_EXPORTERS = {"up", "kube_job_status_failed"}

# Grafana template variables, replaced by a value of the right type before the PromQL is checked.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$alpha": "0.1"}

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
PROMQL_KEYWORDS |= {"offset", "inf", "nan", "atan2"}


def _promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None)
    if found is None:
        pytest.fail("promtool missing: apt-get install prometheus (Debian ships promtool with it)")
    return found


def _alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_exprs() -> dict[str, list[str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs: dict[str, list[str]] = {}
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                exprs.setdefault(panel["title"], []).append(target["expr"])
    return exprs


def _substitute(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a lexer good enough for what dashboards and rules hold)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    # Label lists of grouping and matching clauses: by (a, b), on (a), group_left (a) ...
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue  # a function or an aggregation (sum(...), histogram_quantile(...), vector(...))
        names.add(word)
    return names


def test_metric_name_lexer() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, source) (rate(autopilot_decision_latency_seconds_bucket{a="x y"}[5m])))'
        " / on (process) group_left (stage) foo_total offset 5m and bool up == 1 and vector(0.1)"
    )
    assert metric_names(expr) == {"autopilot_decision_latency_seconds_bucket", "foo_total", "up"}


def test_promtool_accepts_the_alert_rules() -> None:
    checked = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in checked.stdout


def test_chart_rules_are_identical() -> None:
    assert CHART_ALERTS.read_bytes() == ALERTS.read_bytes(), (
        f"{CHART_ALERTS} must be a copy of {ALERTS}: cp deploy/prometheus/alerts.yml helm/bpm-autopilot/files/"
    )


def test_the_alerts_operations_needs() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    needed = {
        "AutopilotRealisedErrorOverAlpha": "autopilot_slice_realised_error",
        "AutopilotDeferralQueueAgeHigh": "autopilot_deferral_queue_age_seconds",
        "AutopilotConsumerLagHigh": "autopilot_kafka_consumer_lag",
        "AutopilotRetrainingJobFailed": "kube_job_status_failed",
        "AutopilotKillSwitchOn": "autopilot_kill_switch",
    }
    for alert, metric in needed.items():
        assert alert in rules, sorted(rules)
        assert metric in metric_names(rules[alert]["expr"]), rules[alert]["expr"]
        assert rules[alert]["labels"]["severity"] in {"warning", "critical"}
        assert rules[alert]["annotations"]["summary"]
    # The retraining alert matches the Jobs of the chart's CronJob (<fullname>-critic-retrain-<time>).
    assert "critic-retrain" in rules["AutopilotRetrainingJobFailed"]["expr"]
    # alpha: the chart's default retrain.alpha is the threshold the realised-error alert uses.
    alpha = yaml.safe_load((CHART / "values.yaml").read_text())["retrain"]["alpha"]
    assert f"> {alpha}" in rules["AutopilotRealisedErrorOverAlpha"]["expr"]


def test_dashboard_parses_and_has_the_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    exprs = _dashboard_exprs()
    joined = "\n".join(e for es in exprs.values() for e in es)
    used = set().union(*(metric_names(_substitute(e)) for e in joined.splitlines() if e))
    for metric in (
        "autopilot_automated_session_ratio",
        "autopilot_decisions_total",
        "autopilot_deferral_queue_depth",
        "autopilot_deferral_queue_age_seconds",
        "autopilot_slice_realised_error",
        "autopilot_slice_stage",
        "autopilot_critic_info",
        "autopilot_kafka_consumer_lag",
        "autopilot_kill_switch",
    ):
        assert metric in used, f"no panel queries {metric}"
    assert re.search(r"histogram_quantile\(0\.99,.*autopilot_decision_latency_seconds_bucket", joined)
    realised = next(es for title, es in exprs.items() if title.startswith("Realised error"))
    assert any("$alpha" in e for e in realised), "the realised-error panel draws alpha beside the slices"
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # Grafana provisioning of the compose stack points at this file and a Prometheus data source.
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query, as the expression of a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _substitute(expr)}
        for i, expr in enumerate(e for es in _dashboard_exprs().values() for e in es)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(scope="module")
def live_metrics(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker, models: Any) -> set[str]:
    """The metric names a live service exports after a copilot suggestion and one started session: every sample
    name (counters with _total, histograms with _bucket/_sum/_count) and every family name (a gauge family with no
    series yet still has its HELP and TYPE)."""
    running = start_service(tmp_path_factory.mktemp("deploy-service"), broker.bootstrap, models)
    try:
        with serve(running.app) as url, httpx.Client(base_url=url, timeout=30.0) as client:
            drive_traffic(running, url)
            response = client.get("/metrics")  # no token: scrapers carry none
            assert response.status_code == 200, response.text
    finally:
        running.service.stop()
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        names.update(sample.name for sample in family.samples)
    return names


def test_every_queried_metric_is_exported(live_metrics: set[str]) -> None:
    assert "autopilot_decision_latency_seconds_bucket" in live_metrics
    assert "autopilot_decisions_total" in live_metrics
    queries = {f"dashboard: {title}": es for title, es in _dashboard_exprs().items()}
    queries |= {f"alert: {rule['alert']}": [rule["expr"]] for rule in _alert_rules()}
    missing: dict[str, set[str]] = {}
    for where, exprs in queries.items():
        for expr in exprs:
            unknown = metric_names(_substitute(expr)) - live_metrics - OTHER_EXPORTERS
            if unknown:
                missing.setdefault(where, set()).update(unknown)
    assert not missing, f"queries name metrics the service does not export: {missing}"
    # The allow-list holds only what other exporters provide, nothing the service should export itself.
    assert not {name for name in OTHER_EXPORTERS if name.startswith("autopilot_")}
