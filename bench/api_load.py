"""API load: POST /api/v1/copilot/suggest from 50 concurrent clients on loopback.

Protocol:

* the service is an ``AutopilotService`` with the demo's models (``out/demo/policy`` and the champion of
  ``out/demo/registry``, via ``AutopilotService.from_settings``) when they exist; else, with ``--policy DIR``, that
  saved policy and the policy-confidence critic; else the tiny test policy with the policy-confidence critic
  (``tests/api/conftest``); the embedded broker, SQLite, the sandbox BPM, no session workers (only the copilot
  path is measured); one torch thread; the policy in ``--policy-processes`` child processes of its own (default 1,
  ``policy.process``; 0: in the service's process; the tiny policy always in process). It is served by uvicorn (one event loop; the route awaits the copilot
  micro-batcher, which gathers concurrent suggestions for at most ``policy_max_wait_ms`` and answers them in one
  batch on its own thread) in a thread of this process.
* the clients run in a child process (``--client``), so they do not share this process's interpreter lock: one
  ``aiohttp.ClientSession`` (keep-alive, up to 50 connections; bodies encoded once: on these two cores the
  clients' own work is taken from the server: httpx's was ~2.9 ms of CPU a request, aiohttp's is 0.2-0.3 ms) and
  ``--concurrency`` tasks taking the next request
  from a shared counter until ``--requests`` are done; the states are sandbox screens of open cases, in turn.
  A warm-up of ``--warmup`` requests first (not counted).
* measured: latency per request (send -> parsed response) p50/p95/p99/max, throughput (requests / seconds of
  the measured part), errors (non-200 or transport errors).
* baseline in the same run: the same number of ``service.suggest()`` calls in this process, one at a time (no
  HTTP, no concurrency, after the same warm-up), so the HTTP + queueing overhead is visible as a ratio.
* beyond capacity: a second phase with ``--overload-concurrency`` clients (default 4 x ``--concurrency``) against
  the same service, whose queue holds ``--max-queue`` states: the answers beyond it must be 429 with
  Retry-After, never a timeout or a transport error (429s are counted apart from errors; a client moves on to its
  next request at once).

Targets: p99 <= 50 ms, >= 500 requests/s and 0 errors with 50 concurrent clients; beyond capacity 429s and no
timeouts. A miss is reported as such.

    .venv/bin/python -m bench.api_load [--requests 3000] [--concurrency 50] [--warmup 100] [--tiny] [--policy DIR]
        [--policy-processes 1]

Writes ``bench/results/api_load.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from sandbox.harness import service_runtime
from schemas.progress import progress_bar

NAME = "api_load"
MAX_ERROR_DETAILS = 10
TARGET_P99_MS = 50.0
TARGET_RPS = 500.0
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
    import aiohttp

    latencies: list[float] = []
    rejected: list[float] = []  # 429: the queue was full
    ok: list[float] = []
    errors: dict[str, int] = {}
    details: list[str] = []
    phase_started = time.perf_counter()
    cpu_started = time.process_time()  # the clients' own CPU: on loopback they share the cores with the service
    counter = iter(range(total))
    # bodies encoded once: the client's own work per request is what it must not measure
    payloads = [json.dumps(body).encode() for body in bodies]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bar = progress_bar(total=total, desc="requests", unit="req", file=sys.stderr, mininterval=1.0)
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60.0)
    timeout = aiohttp.ClientTimeout(total=120.0)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers, timeout=timeout) as client:

        async def worker() -> None:
            for index in counter:
                payload = payloads[index % len(payloads)]
                started = time.perf_counter()
                try:
                    async with client.post(ROUTE, data=payload) as response:
                        await response.read()
                        status = response.status
                        retry_after = response.headers.get("Retry-After", "")
                    elapsed_ms = (time.perf_counter() - started) * 1000.0
                    if status == 429:
                        rejected.append(elapsed_ms)
                        if not retry_after.isdigit():
                            errors["429 without Retry-After"] = errors.get("429 without Retry-After", 0) + 1
                        bar.update()
                        continue
                    if status == 200:
                        ok.append(elapsed_ms)
                    else:
                        errors[str(status)] = errors.get(str(status), 0) + 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    if len(details) < MAX_ERROR_DETAILS:  # when and how, to tell a startup burst from a stall
                        details.append(
                            f"{time.perf_counter() - phase_started:.2f} s into the phase, after "
                            f"{(time.perf_counter() - started) * 1000:.0f} ms: {type(exc).__name__}: {exc!r}"
                        )
                latencies.append((time.perf_counter() - started) * 1000.0)
                bar.update()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    bar.close()
    return {
        "latencies_ms": latencies,
        "ok_ms": ok,
        "rejected_ms": rejected,
        "errors": errors,
        "error_details": details,
        "seconds": elapsed,
        "cpu_s": time.process_time() - cpu_started,
    }


def client_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    bodies = spec["bodies"]
    if spec["warmup"]:
        asyncio.run(_load(spec["url"], spec["token"], bodies, spec["warmup"], spec["concurrency"]))
    result = asyncio.run(_load(spec["url"], spec["token"], bodies, spec["requests"], spec["concurrency"]))
    if spec.get("overload_concurrency"):
        result["overload"] = asyncio.run(
            _load(spec["url"], spec["token"], bodies, spec["requests"], spec["overload_concurrency"])
        )
    Path(out_path).write_text(json.dumps(result))


# ---- the service ----------------------------------------------------------------------------------------------------


def _build_service(
    data_dir: Path, bootstrap: str, tiny: bool, policy_dir: Path | None, max_queue: int, policy_processes: int
) -> tuple[Any, str]:
    from service.api.context import AutopilotService
    from service.api.settings import ServiceSettings
    from tests.api.conftest import service_settings

    demo = (DEMO_POLICY / "policy.json").is_file() and DEMO_REGISTRY.is_dir() and not tiny and policy_dir is None
    overrides: dict[str, Any] = {
        "workers": 0,
        "sandbox_cases": 60,
        "torch_threads": 1,
        "policy_max_queue": max_queue,
        "policy_processes": policy_processes,
    }
    if demo:
        settings: ServiceSettings = service_settings(
            data_dir, bootstrap, policy_dir=DEMO_POLICY, registry_dir=DEMO_REGISTRY, **overrides
        )
        return AutopilotService.from_settings(
            settings, service_runtime
        ).start(), f"demo models ({DEMO_POLICY.relative_to(ROOT)})"
    from tests.api.conftest import models

    if policy_dir is not None and not tiny:
        from critic.confidence import fit_on_steps
        from critic.thresholds import SliceThresholds, ThresholdConfig, ThresholdResult
        from policy.process import serving_policy
        from sandbox.generate import iter_traces

        policy = serving_policy(policy_dir, processes=policy_processes, reply_guard=False)
        critic = fit_on_steps(policy, [step for trace in iter_traces(6, 77) for step in trace.steps])
        result = ThresholdResult(0.6, 200, 100, 3, 0.03, 0.07, 0.5, "set by hand for the benchmark")
        thresholds = SliceThresholds(ThresholdConfig(granularity="global", alpha=0.1), {"*": result})
        settings = service_settings(data_dir, bootstrap, **overrides)
        service = AutopilotService.build(
            settings, policy, critic, thresholds, "policy-confidence", runtime_factory=service_runtime
        ).start()
        return service, f"policy {policy_dir} ({policy.version_}) + policy-confidence critic"
    policy, critic, thresholds = models.__wrapped__()  # type: ignore[attr-defined]
    settings = service_settings(data_dir, bootstrap, **overrides)
    service = AutopilotService.build(
        settings, policy, critic, thresholds, "critic-test-1", runtime_factory=service_runtime
    ).start()
    return service, "tiny test policy + policy-confidence critic (tests/api/conftest)"


def run(
    requests: int,
    concurrency: int,
    warmup: int,
    tiny: bool,
    policy_dir: Path | None = None,
    overload_concurrency: int = 0,
    max_queue: int = 64,
    policy_processes: int = 1,
) -> dict[str, Any]:
    import torch

    from service.api.app import create_app
    from service.api.auth import Role, TokenStore, issue_token
    from service.runtime.bus.broker import EmbeddedBroker
    from tests.api.conftest import serve

    torch.set_num_threads(1)
    processes = 0 if tiny else policy_processes  # the tiny test policy is not saved: it stays in process
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="api-load-") as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        service, models = _build_service(workdir / "service", broker.bootstrap, tiny, policy_dir, max_queue, processes)
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
                            "overload_concurrency": overload_concurrency,
                        }
                    )
                )
                log.info("%d clients, %d requests (+%d warm-up) on %s", concurrency, requests, warmup, url)
                cpu_before = resource.getrusage(resource.RUSAGE_SELF)
                subprocess.run(
                    [sys.executable, "-m", "bench.api_load", "--client", str(spec), str(out)], cwd=ROOT, check=True
                )
                cpu_after = resource.getrusage(resource.RUSAGE_SELF)
                http = json.loads(out.read_text())
            stats = service.suggester.stats  # the HTTP phases only: the baseline below adds batches of one
            batching = {
                "batches": stats.batches,
                "suggestions": stats.items,
                "mean_batch": round(stats.items / stats.batches, 2) if stats.batches else None,
                "largest_batch": stats.largest_batch,
                "rejected_full": stats.rejected_full,
                "timed_out_in_queue": stats.timed_out,
            }
            # Baseline: the same number of in-process suggest() calls, one at a time (after the same warm-up).
            for index in range(warmup):
                service.suggest(states[index % len(states)])
            direct: list[float] = []
            started = time.perf_counter()
            for index in progress_bar(range(requests), desc="in-process suggest()", unit="call", mininterval=1.0):
                t0 = time.perf_counter()
                service.suggest(states[index % len(states)])
                direct.append((time.perf_counter() - t0) * 1000.0)
            direct_seconds = time.perf_counter() - started
        finally:
            service.stop()
    load_after = os.getloadavg()
    latency = _summary(http["latencies_ms"])
    baseline = _summary(direct)
    errors = sum(http["errors"].values()) + len(http["rejected_ms"])  # a 429 at 50 clients counts as an error
    p99 = latency["p99"]
    rps = requests / http["seconds"]
    overload = http.get("overload")
    served = warmup + requests + (requests if overload is not None else 0)
    service_cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    cpu_per_request = {
        # every thread of this process (HTTP, batcher, critic, store, bus), not the policy's child processes
        "service_process_all_phases": round(service_cpu_s / served * 1000.0, 3),
        "clients_measured_phase": round(http["cpu_s"] / requests * 1000.0, 3),
    }
    overload_result = None
    if overload is not None:
        transport = {k: v for k, v in overload["errors"].items() if not k[:3].isdigit()}
        overload_result = {
            "concurrency": overload_concurrency,
            "max_queue": max_queue,
            "served": len(overload["ok_ms"]),
            "rejected_429": len(overload["rejected_ms"]),
            "errors_by_kind": overload["errors"],
            "error_details": overload["error_details"],
            "timeouts_or_transport_errors": sum(transport.values()),
            "latency_ms_served": _summary(overload["ok_ms"]),
            "latency_ms_429": _summary(overload["rejected_ms"]),
            "throughput_rps_served": round(len(overload["ok_ms"]) / overload["seconds"], 2),
            "seconds": round(overload["seconds"], 3),
            "met": bool(overload["rejected_ms"]) and not transport,
        }
    return {
        "name": NAME,
        "models": models,
        "route": f"POST {ROUTE}",
        "policy_processes": processes,
        "concurrency": concurrency,
        "requests": requests,
        "warmup": warmup,
        "http": {
            "latency_ms": latency,
            "seconds": round(http["seconds"], 3),
            "throughput_rps": round(rps, 2),
            "errors": errors,
            "errors_by_kind": {**http["errors"], **({"429": len(http["rejected_ms"])} if http["rejected_ms"] else {})},
        },
        "batching": batching,
        "cpu_ms_per_request": cpu_per_request,
        "overload": overload_result,
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
            "throughput_rps": TARGET_RPS,
            "concurrency": concurrency,
            "met": p99 is not None and p99 <= TARGET_P99_MS,
            "throughput_met": rps >= TARGET_RPS,
            "errors_met": errors == 0,
        },
        "load_average_before": load_before,
        "load_average_after": load_after,
        "peak_rss_kib": peak_rss_kib(),
        "environment": environment(),
    }


def _where_policy(processes: int) -> str:
    if processes == 0:
        return "in the service's process"
    return f"in {processes} child process{'es' if processes > 1 else ''} of its own (AUTOPILOT_POLICY_PROCESSES)"


def markdown(result: dict[str, Any]) -> str:
    http, base = result["http"], result["baseline_in_process"]
    lat, blat = http["latency_ms"], base["latency_ms"]
    target = result["target"]

    def mark(ok: bool) -> str:
        return "met" if ok else "missed"

    batching = result["batching"]
    lines = [
        f"# API load: {result['route']}, {result['concurrency']} concurrent clients",
        "",
        f"Models: {result['models']}; one torch thread; uvicorn (one process; the route awaits the copilot "
        "micro-batcher, which answers concurrent suggestions in one batch on its own thread) on loopback; the policy "
        f"{_where_policy(result.get('policy_processes', 0))}; clients in "
        f"a child process (aiohttp, keep-alive, {result['concurrency']} tasks); {result['requests']} "
        f"measured requests after {result['warmup']} warm-up. Load average before / after: "
        f"{[round(x, 2) for x in result['load_average_before']]} / "
        f"{[round(x, 2) for x in result['load_average_after']]} on {result['environment']['cpu_count']} cores "
        "(shared with other work).",
        "",
        "| measure | HTTP, concurrent | in-process suggest(), one at a time | target | |",
        "|---|---:|---:|---:|---|",
        f"| p50 | {lat['p50']} ms | {blat['p50']} ms |  |  |",
        f"| p95 | {lat['p95']} ms | {blat['p95']} ms |  |  |",
        f"| p99 | {lat['p99']} ms | {blat['p99']} ms | <= {TARGET_P99_MS:.0f} ms | {mark(target['met'])} |",
        f"| max | {lat['max']} ms | {blat['max']} ms |  |  |",
        f"| throughput | {http['throughput_rps']} req/s | {base['throughput_rps']} calls/s | >= {TARGET_RPS:.0f} req/s "
        f"| {mark(target['throughput_met'])} |",
        f"| errors | {http['errors']} {http['errors_by_kind'] or ''} | 0 | 0 | {mark(target['errors_met'])} |",
        f"| seconds | {http['seconds']} | {base['seconds']} |  |  |",
        "",
        f"HTTP p50 / in-process p50: {result['ratio_http_p50_over_direct_p50']}x. Micro-batches in the HTTP phases "
        f"(warm-up, measured, beyond capacity): {batching['batches']} for {batching['suggestions']} suggestions "
        f"(mean {batching['mean_batch']}, largest {batching['largest_batch']}). Throughput is bounded by the "
        "policy's rate on the core it runs on (bench/results/policy_speed.md) and by the HTTP stack's own work per "
        "request (one interpreter lock; the policy's too when it runs in the service's process), and latency under "
        "concurrency by about "
        "clients / throughput. Small mean batches mean requests reached the batcher slower than it answered them: "
        "the bound was then upstream of the policy (event loop, request handling, the clients on the same cores).",
        "",
    ]
    cpu = result.get("cpu_ms_per_request")
    if cpu:
        lines += [
            f"CPU per request on the shared cores: the service's process {cpu['service_process_all_phases']} ms "
            "(every thread, mean over the warm-up, measured and beyond-capacity phases; the policy's child "
            f"processes not counted), the clients {cpu['clients_measured_phase']} ms (the measured phase).",
            "",
        ]
    overload = result.get("overload")
    if overload:
        served, rejected = overload["latency_ms_served"], overload["latency_ms_429"]
        lines += [
            f"## Beyond capacity: {overload['concurrency']} clients, queue of {overload['max_queue']} states",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| served (200) | {overload['served']} (p50 {served['p50']} ms, p99 {served['p99']} ms) |",
            f"| refused at once (429 + Retry-After) | {overload['rejected_429']} (p50 {rejected['p50']} ms, p99 "
            f"{rejected['p99']} ms) |",
            f"| timeouts or transport errors | {overload['timeouts_or_transport_errors']} |",
            f"| served throughput | {overload['throughput_rps_served']} req/s |",
            "",
            f"Target (429s, no timeouts): {mark(overload['met'])}.",
            "",
        ]
    lines += [f"Peak RSS of the benchmark process: {result['peak_rss_kib'] / 1024:.0f} MiB.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--tiny", action="store_true", help="the tiny test policy even when the demo models exist")
    parser.add_argument("--policy", type=Path, default=None, help="a saved policy (with the policy-confidence critic)")
    parser.add_argument("--overload-concurrency", type=int, default=None, help="default: 4 x --concurrency")
    parser.add_argument("--max-queue", type=int, default=64, help="states the copilot's queue holds")
    parser.add_argument(
        "--policy-processes", type=int, default=1, help="child processes holding the policy (0: in the service's)"
    )
    parser.add_argument("--client", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(*args.client)
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    overload = 4 * args.concurrency if args.overload_concurrency is None else args.overload_concurrency
    result = run(
        args.requests,
        args.concurrency,
        args.warmup,
        args.tiny,
        args.policy,
        overload,
        args.max_queue,
        args.policy_processes,
    )
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
