"""Shared pieces of the deployment checks: the repository paths, the chart rendered offline with helm-python-sdk
(Helm v4's Go code through a shared library: no ``helm`` binary, no cluster), and the API tests' session fixtures
(``broker``, ``models``) re-exported for the live-service check of the dashboards and alert rules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.conftest import broker, models

__all__ = ["REPO", "Rendered", "broker", "models", "render_chart"]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "bpm-autopilot"
DEPLOY = REPO / "deploy"
PRODUCTION_VALUES = CHART / "values-production.yaml"
RELEASE = "autopilot"
NAMESPACE = "support"


@dataclass(frozen=True)
class Rendered:
    """A rendered release: every manifest as a dict, in template order."""

    name: str
    values: dict[str, Any]
    docs: list[dict[str, Any]]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, suffix: str = "") -> dict[str, Any]:
        found = [doc for doc in self.kinds(kind) if doc["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"expected one {kind} named *{suffix}, found {[d['metadata']['name'] for d in found]}"
        return found[0]

    def pod_specs(self) -> dict[str, dict[str, Any]]:
        """Pod specs of the workloads, by kind/name."""
        specs: dict[str, dict[str, Any]] = {}
        for doc in self.docs:
            key = f"{doc['kind']}/{doc['metadata']['name']}"
            if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
                specs[key] = doc["spec"]["template"]["spec"]
            elif doc["kind"] == "CronJob":
                specs[key] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return specs

    def containers(self) -> dict[str, dict[str, Any]]:
        """Every container (init containers too), by kind/name/container."""
        return {
            f"{key}/{container['name']}": container
            for key, spec in self.pod_specs().items()
            for container in [*spec.get("initContainers", []), *spec["containers"]]
        }


def render_chart(values: dict[str, Any] | None = None, name: str = RELEASE) -> Rendered:
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=name, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(name, values or {}, docs)


def production_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return loaded


@pytest.fixture(scope="session")
def default_release() -> Rendered:
    return render_chart()


@pytest.fixture(scope="session")
def production_release() -> Rendered:
    return render_chart(production_values())


@pytest.fixture(scope="session", params=["default", "production"])
def release(
    request: pytest.FixtureRequest, default_release: Rendered, production_release: Rendered
) -> Iterator[Rendered]:
    yield default_release if request.param == "default" else production_release
