"""The demo's last stage: start the service on what the demo built, show it working, print the URLs and tokens.

The service reads the demo's policy, critic registry (its champion and thresholds; holding slices are promoted),
runtime store (the autopilot phase's sessions show on the dashboard) and critic report plots. It opens a few new
sandbox cases and starts background sessions for them with the demo service token; with no simulated operators,
their deferred steps wait in the operator inbox for a human in the sidebar. Then it checks its own pages and
endpoints over HTTP, prints where they are with demo tokens, and either keeps serving until Ctrl-C (an
interactive terminal, or ``--serve``) or stops (``make demo`` in CI).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from sandbox.harness import SandboxRuntime, service_runtime
from sandbox.processes.registry import PROCESSES
from service.api.app import create_app
from service.api.auth import Principal, Role, TokenStore, demo_tokens
from service.api.context import AutopilotService
from service.api.server_thread import ServerThread
from service.api.settings import ServiceSettings

DEMO_SESSIONS = 12


def _port(host: str, preferred: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, preferred))
            return preferred
        except OSError:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])


def serve_demo(
    out: Path,
    seed: int,
    port: int = 8000,
    keep_serving: bool = False,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Start the service on the demo's output, self-check it, print URLs and tokens; ``on_ready`` is called with
    the result once it answers (before serving until Ctrl-C when ``keep_serving``)."""
    host = "127.0.0.1"
    port = _port(host, port)
    settings = ServiceSettings(
        data_dir=out,
        host=host,
        port=port,
        seed=seed,
        workers=1,
        sandbox_cases=DEMO_SESSIONS + 8,
        topic_prefix="demo.",
        plots_dir=out / "critic_report",
    )
    tokens = demo_tokens(settings.resolved_tokens_file(), sorted(PROCESSES))
    service = AutopilotService.from_settings(settings, service_runtime)
    app = create_app(service, TokenStore(settings.resolved_tokens_file()), manage_service=True)
    # the lifespan starts the service
    server = ServerThread(app, host, port, name="api", keep_alive_s=settings.keep_alive_s).start(timeout_s=60.0)
    base = server.url
    checks: dict[str, Any] = {}
    try:
        assert isinstance(service.runtime, SandboxRuntime)
        platform = service.runtime.platform
        case_ids = sorted(platform.cases)[:DEMO_SESSIONS]
        service.start_sessions(Principal("demo-service", Role.SERVICE, ()), case_ids)
        with httpx.Client(base_url=base, timeout=10.0) as client:
            operator = {"Authorization": f"Bearer {tokens['operator']}"}
            supervisor = {"Authorization": f"Bearer {tokens['supervisor']}"}
            checks["readyz"] = client.get("/readyz").status_code
            checks["sidebar"] = client.get("/ui/sidebar").status_code
            checks["dashboard"] = client.get("/ui/dashboard").status_code
            pending = 0
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline and pending == 0:
                pending = len(client.get("/api/v1/inbox", headers=operator).json()["items"])
                time.sleep(0.2)
            time.sleep(2.0)  # the first deferral is in: give the other sessions' first steps a moment
            pending = len(client.get("/api/v1/inbox", headers=operator).json()["items"])
            checks["inbox_pending"] = pending
            overview = client.get("/api/v1/supervisor/overview", headers=supervisor).json()
            checks["slices_in_autopilot"] = sum(1 for s in overview["slices"] if s["stage"] == "autopilot")
            checks["metrics_has_decisions"] = "autopilot_decisions_total" in client.get("/metrics").text
        print(f"\n[6/6] service: {base} (OpenAPI docs at {base}/docs, metrics at {base}/metrics)")
        print(f"  operator copilot sidebar: {base}/ui/sidebar    token: {tokens['operator']}")
        print(f"  supervisor dashboard:     {base}/ui/dashboard  token: {tokens['supervisor']}")
        print(f"  service token (starting sessions through the API): {tokens['service']}")
        print(
            f"  {DEMO_SESSIONS} background sessions started; {checks['inbox_pending']} deferred step(s) wait in the "
            f"operator's inbox; {checks['slices_in_autopilot']} slices in autopilot; self-check {checks}"
        )
        print(f"  again later: autopilot serve --sandbox --data-dir {out} (the tokens above stay valid)")
        result = {"url": base, "checks": checks, "tokens_file": str(settings.resolved_tokens_file())}
        if on_ready is not None:
            on_ready(result)
        if keep_serving:
            print("  serving until Ctrl-C ...", flush=True)
            try:
                while server.alive():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
    finally:
        server.stop()
    return result
