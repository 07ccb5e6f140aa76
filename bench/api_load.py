"""API load: POST /api/v1/copilot/suggest from 50 concurrent clients on loopback.

Protocol:

* the service is an ``AutopilotService`` with the demo's models (``out/demo/policy`` and the champion of
  ``out/demo/registry``, via ``AutopilotService.from_settings``) when they exist, else the tiny test policy with
  the policy-confidence critic (``tests/api/conftest``); the embedded broker, SQLite, the sandbox BPM, no session
  workers (only the copilot path is measured); one torch thread. It is served by uvicorn (one event loop, the
  sync route in its thread pool) in a thread of this process.
* the clients run in a child process (``--client``), so they do not share this process's interpreter lock: one
  ``httpx.AsyncClient`` (keep-alive, up to 50 connections) and ``--concurrency`` tasks taking the next request
  from a shared counter until ``--requests`` are done; the states are sandbox screens of open cases, in turn.
  A warm-up of ``--warmup`` requests first (not counted).
* measured: latency per request (send -> parsed response) p50/p95/p99/max, throughput (requests / seconds of
  the measured part), errors (non-200 or transport errors).
* baseline in the same run: the same number of ``service.suggest()`` calls in this process, one at a time (no
  HTTP, no concurrency, after the same warm-up), so the HTTP + queueing overhead is visible as a ratio.

Target: p99 <= 50 ms with 50 concurrent clients. A miss is reported as such.

    .venv/bin/python -m bench.api_load [--requests 3000] [--concurrency 50] [--warmup 100] [--tiny]

Writes ``bench/results/api_load.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from sandbox.harness import service_runtime

NAME = "api_load"
TARGET_P99_MS = 50.0
DEMO_POLICY = ROOT / "out" / "demo" / "policy"
DEMO_REGISTRY = ROOT / "out" / "demo" / "registry"
ROUTE = "/api/v1/copilot/suggest"

log = logging.getLogger("bench.api_load")


def _summary(values_ms: list[float]) -> dict[str, float | int | None]:
    if not values_ms:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    array = np.asarray(values_ms)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "count": len(values_ms),
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "p99": round(float(p99), 2),
        "max": round(float(array.max()), 2),
        "mean": round(float(array.mean()), 2),
    }


# ---- the clients: a child process ---------------------------------------------------------------------------------


async def _load(url: str, token: str, bodies: list[dict[str, Any]], total: int, concurrency: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    bar = tqdm(total=total, desc="requests", unit="req", file=sys.stderr, mininterval=1.0)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120.0) as client:

        async def worker() -> None:
            for index in counter:
                body = bodies[index % len(bodies)]
                started = time.perf_counter()
                try:
                    response = await client.post(ROUTE, json=body)
                    response.json()
                    if response.status_code != 200:
                        errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                latencies.append((time.perf_counter() - started) * 1000.0)
                bar.update()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    bar.close()
    return {"latencies_ms": latencies, "errors": errors, "seconds": elapsed}


def client_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    bodies = spec["bodies"]
    if spec["warmup"]:
        asyncio.run(_load(spec["url"], spec["token"], bodies, spec["warmup"], spec["concurrency"]))
    result = asyncio.run(_load(spec["url"], spec["token"], bodies, spec["requests"], spec["concurrency"]))
    Path(out_path).write_text(json.dumps(result))


# ---- the service ----------------------------------------------------------------------------------------------------


def _build_service(data_dir: Path, bootstrap: str, tiny: bool) -> tuple[Any, str]:
    from service.api.context import AutopilotService
    from service.api.settings import ServiceSettings
    from tests.api.conftest import service_settings

    demo = (DEMO_POLICY / "policy.json").is_file() and DEMO_REGISTRY.is_dir() and not tiny
    overrides: dict[str, Any] = {"workers": 0, "sandbox_cases": 60, "torch_threads": 1}
    if demo:
        settings: ServiceSettings = service_settings(
            data_dir, bootstrap, policy_dir=DEMO_POLICY, registry_dir=DEMO_REGISTRY, **overrides
        )
        return AutopilotService.from_settings(
            settings, service_runtime
        ).start(), f"demo models ({DEMO_POLICY.relative_to(ROOT)})"
    from tests.api.conftest import models

    policy, critic, thresholds = models.__wrapped__()  # type: ignore[attr-defined]
    settings = service_settings(data_dir, bootstrap, **overrides)
    service = AutopilotService.build(
        settings, policy, critic, thresholds, "critic-test-1", runtime_factory=service_runtime
    ).start()
    return service, "tiny test policy + policy-confidence critic (tests/api/conftest)"


def run(requests: int, concurrency: int, warmup: int, tiny: bool) -> dict[str, Any]:
    import torch

    from service.api.app import create_app
    from service.api.auth import Role, TokenStore, issue_token
    from service.runtime.bus.broker import EmbeddedBroker
    from tests.api.conftest import serve

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="api-load-") as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        service, models = _build_service(workdir / "service", broker.bootstrap, tiny)
        try:
            tokens_file = workdir / "tokens.json"
            token = issue_token(tokens_file, "bench", Role.SERVICE)
            app = create_app(service, TokenStore(tokens_file, check_interval_s=0.0))
            platform = service.runtime.platform
            assert platform is not None
            states = [platform.observe(case_id) for case_id in sorted(platform.cases)]
            bodies = [{"state": s.model_dump(mode="json")} for s in states]
            with serve(app) as url:
                spec = workdir / "spec.json"
                out = workdir / f"client-{uuid.uuid4().hex[:6]}.json"
                spec.write_text(
                    json.dumps(
                        {
                            "url": url,
                            "token": token,
                            "bodies": bodies,
                            "requests": requests,
                            "warmup": warmup,
                            "concurrency": concurrency,
                        }
                    )
                )
                log.info("%d clients, %d requests (+%d warm-up) on %s", concurrency, requests, warmup, url)
                subprocess.run(
                    [sys.executable, "-m", "bench.api_load", "--client", str(spec), str(out)], cwd=ROOT, check=True
                )
                http = json.loads(out.read_text())
            # Baseline: the same number of in-process suggest() calls, one at a time (after the same warm-up).
            for index in range(warmup):
                service.suggest(states[index % len(states)])
            direct: list[float] = []
            started = time.perf_counter()
            for index in tqdm(range(requests), desc="in-process suggest()", unit="call", mininterval=1.0):
                t0 = time.perf_counter()
                service.suggest(states[index % len(states)])
                direct.append((time.perf_counter() - t0) * 1000.0)
            direct_seconds = time.perf_counter() - started
        finally:
            service.stop()
    load_after = os.getloadavg()
    latency = _summary(http["latencies_ms"])
    baseline = _summary(direct)
    errors = sum(http["errors"].values())
    p99 = latency["p99"]
    return {
        "name": NAME,
        "models": models,
        "route": f"POST {ROUTE}",
        "concurrency": concurrency,
        "requests": requests,
        "warmup": warmup,
        "http": {
            "latency_ms": latency,
            "seconds": round(http["seconds"], 3),
            "throughput_rps": round(requests / http["seconds"], 2),
            "errors": errors,
            "errors_by_kind": http["errors"],
        },
        "baseline_in_process": {
            "latency_ms": baseline,
            "seconds": round(direct_seconds, 3),
            "throughput_rps": round(requests / direct_seconds, 2),
        },
        "ratio_http_p50_over_direct_p50": (
            round(float(latency["p50"]) / float(baseline["p50"]), 2) if latency["p50"] and baseline["p50"] else None
        ),
        "target": {
            "p99_ms": TARGET_P99_MS,
            "concurrency": concurrency,
            "met": p99 is not None and p99 <= TARGET_P99_MS,
        },
        "load_average_before": load_before,
        "load_average_after": load_after,
        "peak_rss_kib": peak_rss_kib(),
        "environment": environment(),
    }


def markdown(result: dict[str, Any]) -> str:
    http, base = result["http"], result["baseline_in_process"]
    lat, blat = http["latency_ms"], base["latency_ms"]
    met = "met" if result["target"]["met"] else "missed"
    lines = [
        f"# API load: {result['route']}, {result['concurrency']} concurrent clients",
        "",
        f"Models: {result['models']}; one torch thread; uvicorn (one process, the sync route in its thread pool) on "
        f"loopback; clients in a child process (httpx.AsyncClient, keep-alive, {result['concurrency']} tasks); "
        f"{result['requests']} measured requests after {result['warmup']} warm-up. Load average before / after: "
        f"{[round(x, 2) for x in result['load_average_before']]} / "
        f"{[round(x, 2) for x in result['load_average_after']]} on {result['environment']['cpu_count']} cores.",
        "",
        "| measure | HTTP, concurrent | in-process suggest(), one at a time | target | |",
        "|---|---:|---:|---:|---|",
        f"| p50 | {lat['p50']} ms | {blat['p50']} ms |  |  |",
        f"| p95 | {lat['p95']} ms | {blat['p95']} ms |  |  |",
        f"| p99 | {lat['p99']} ms | {blat['p99']} ms | <= {TARGET_P99_MS:.0f} ms | {met} |",
        f"| max | {lat['max']} ms | {blat['max']} ms |  |  |",
        f"| throughput | {http['throughput_rps']} req/s | {base['throughput_rps']} calls/s |  |  |",
        f"| errors | {http['errors']} {http['errors_by_kind'] or ''} | 0 |  |  |",
        f"| seconds | {http['seconds']} | {base['seconds']} |  |  |",
        "",
        f"HTTP p50 / in-process p50: {result['ratio_http_p50_over_direct_p50']}x. The service runs one policy call "
        "at a time (``runtime.policy_lock``), so with 50 clients a request queues behind the others: latency under "
        "concurrency is about concurrency x service time, and throughput is bounded by 1 / (in-process time).",
        "",
        f"In-process p99 alone is {blat['p99']} ms: the target "
        + (
            "leaves room for HTTP and queueing."
            if (blat["p99"] or 0) <= TARGET_P99_MS
            else "is out of reach for "
            "these models at any concurrency on this machine (one policy call exceeds it at the tail)."
        )
        + f" At 50 clients a p99 of {TARGET_P99_MS:.0f} ms needs about 50 requests served per 50 ms, i.e. "
        "~1 ms per suggestion, or several replicas / batched proposals.",
        "",
        f"Peak RSS of the benchmark process: {result['peak_rss_kib'] / 1024:.0f} MiB.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--tiny", action="store_true", help="the tiny test policy even when the demo models exist")
    parser.add_argument("--client", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(*args.client)
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    result = run(args.requests, args.concurrency, args.warmup, args.tiny)
    # bench.api_streams merges its keys (edge, streams, idle) into the same file: keep them.
    previous = RESULTS_DIR / f"{NAME}.json"
    if previous.is_file():
        kept = json.loads(previous.read_text())
        result |= {k: v for k, v in kept.items() if k in ("edge", "streams", "idle") or k.startswith("hardening_")}
    json_path, md_path = write_results(NAME, result, markdown(result))
    print(markdown(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
