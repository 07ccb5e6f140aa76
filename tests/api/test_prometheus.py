"""A real Prometheus scrapes the live service: the counters and gauges the service exports arrive in its TSDB and
answer PromQL, and ``promtool check metrics`` accepts the exposition text.

Prometheus (Debian's 2.42 in /usr/bin) runs as a subprocess with a config scraping ``live_url`` every second; the
test polls its HTTP API instead of sleeping (the first sample lands a few seconds after start).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.runtime.metrics import METRIC_NAMES
from tests.api.conftest import Running, drive_traffic, wait_for

pytestmark = pytest.mark.integration

MISSING = "prometheus missing: run make system-deps"


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
    if found is None:
        pytest.fail(MISSING if name == "prometheus" else f"{name} missing: run make system-deps")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def prometheus(live_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus scraping ``live_url``/metrics every second; yields its base URL."""
    binary = _binary("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    target = urlsplit(live_url).netloc
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: autopilot\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = _free_port()
    log_path = work / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, f"prometheus exited {process.returncode}: {log_path.read_text()[-2000:]}"
            try:
                return httpx.get(f"{url}/-/ready", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=30.0, interval=0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5.0)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _scalar(prometheus: str, promql: str) -> float | None:
    result = _query(prometheus, promql)
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def traffic(running: Running, live_url: str) -> dict[str, Any]:
    """A copilot suggestion and one started background session, through the live API."""
    return drive_traffic(running, live_url)


def test_prometheus_scrapes_the_service(prometheus: str, traffic: dict[str, Any]) -> None:
    up = wait_for(lambda: _scalar(prometheus, 'up{job="autopilot"}'), timeout=30.0, interval=0.2)
    assert up == 1.0
    # One copilot decision and at least one of the worker's (scraped a second or so after they were made).
    wait_for(lambda: (_scalar(prometheus, "sum(autopilot_decisions_total)") or 0.0) >= 2.0, timeout=30.0, interval=0.2)
    decisions = _scalar(prometheus, "sum(autopilot_decisions_total)")
    assert decisions is not None and decisions >= 2.0
    by_source = {
        row["metric"]["source"]: float(row["value"][1])
        for row in _query(prometheus, "sum by (source) (autopilot_decisions_total)")
    }
    assert by_source.get("copilot", 0.0) >= 1.0 and by_source.get("worker", 0.0) >= 1.0, by_source
    sessions = wait_for(lambda: _scalar(prometheus, "sum(autopilot_sessions)"), timeout=30.0, interval=0.2)
    assert sessions >= 1.0
    latency = _scalar(prometheus, 'sum(autopilot_decision_latency_seconds_count{source="copilot"})')
    assert latency is not None and latency >= 1.0
    # Every exported family is known to Prometheus (a family with no series yet has no metadata: checked by name
    # against the scraped series instead).
    names = set(httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=5.0).json()["data"])
    always = {"autopilot_decisions_total", "autopilot_sessions", "autopilot_kill_switch", "autopilot_critic_info"}
    assert always <= names, sorted(always - names)
    assert {n for n in names if n.startswith("autopilot_")}, names
    unknown = {
        n
        for n in names
        if n.startswith("autopilot_")
        and not any(
            n == m or n.startswith(m + "_") or n.startswith(m.removesuffix("_total") + "_") for m in METRIC_NAMES
        )
    }
    assert not unknown, f"series not in METRIC_NAMES: {sorted(unknown)}"


def test_promtool_accepts_the_exposition(live_url: str, traffic: dict[str, Any]) -> None:
    promtool = _binary("promtool")
    text = httpx.get(f"{live_url}/metrics", timeout=10.0).text
    assert "autopilot_decisions_total" in text
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    output = (checked.stdout + checked.stderr).strip()
    # promtool: exit 0 clean, 3 lint problems only (warnings, reported), anything else a parse error.
    if checked.returncode == 3:
        print(f"promtool lint warnings:\n{output}")
        warnings = [line for line in output.splitlines() if line.strip()]
        assert warnings, "promtool exited 3 without naming a lint problem"
        return
    assert checked.returncode == 0, f"promtool check metrics failed ({checked.returncode}):\n{output}"
