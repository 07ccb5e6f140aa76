"""Liveness, readiness and the Prometheus endpoint (no authentication: probes and scrapers carry no token, and
none of these shows a customer's data)."""

from __future__ import annotations

import socket

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import ServiceDep
from service.api.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process answers (liveness)."""
    return Health(status="ok", checks={})


def _broker_reachable(bootstrap: str) -> bool:
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return True
        except (OSError, ValueError):
            continue
    return False


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(service: ServiceDep, response: Response) -> Health:
    """Ready to serve: the store answers and the broker accepts connections. The workers are reported, never
    required: with ``AUTOPILOT_WORKERS=0`` they run in other pods, and the API serves without them."""
    checks: dict[str, str] = {}
    try:
        beats = service.worker_heartbeats()
        checks["store"] = "ok"
    except Exception as exc:
        beats = []
        checks["store"] = f"failed: {type(exc).__name__}"
    checks["broker"] = "ok" if service.runtime.bootstrap and _broker_reachable(service.runtime.bootstrap) else "failed"
    local = sum(1 for t in service.runtime.worker_threads() if t.is_alive())
    alive = sum(1 for beat in beats if beat.alive())
    checks["workers"] = f"{alive} alive by their heartbeats ({local} threads in this process)"
    ok = all(v == "ok" for k, v in checks.items() if k != "workers")
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ok else "unavailable", checks=checks)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
