"""Runtime throughput: 1,000 concurrent background sessions in ONE worker, with the default policy and critic.

Protocol (one process, one embedded Tansu broker, a SQLite store file, the in-process sandbox BPM):

* the policy is the trained default (``out/bench/policy_default``; else the demo's ``out/demo/policy``; else a
  tiny policy fitted here), on one torch thread: it is the bottleneck by design. The critic is the champion of
  ``out/demo/registry`` when there is one (else the policy-confidence critic), with one global threshold set by
  hand (``--threshold``) so most steps execute and the loop runs: the registry's own per-slice thresholds hold
  for few slices on the demo's feedback, and the router would defer nearly everything. Every slice starts in
  autopilot; ``audit_rate`` 0.05. The simulated operator pool (in this process, no think time) answers deferrals.
* ``--sessions`` cases (default 1,000) are opened and their start commands published at once, so every session
  is active in the one worker from the start. Two configurations are run on fresh cases, topics and store:
  ``batch_size 1`` for a fixed window (``--window-s``) and ``batch_size 32`` (the runtime's default) until every
  session has ended (or ``--cap-s``). The first is the baseline: on one CPU thread a batch costs about as much
  per state as single proposals, so batching trades decision latency for little throughput.
* measured: sessions/s (ended sessions / seconds from the first start command to the last end), decisions/s,
  decision latency (observe -> decision, the worker's own reservoir: it includes the policy call of the whole
  batch the session is in), deferral latency on loopback (broker timestamp of the deferral -> the operator
  inbox: the pool in this process, and an inbox probe in its own process as the operator gateway of a
  deployment would be; plus deferral ``created_at`` -> inbox), peak RSS, most sessions active at once.
* baseline of the bus itself in the same run: a bare round trip (publish one small payload at a time -> the
  probe process's consumer), on the same broker.

Targets: decision p99 <= 50 ms with the default models; deferral p99 <= 50 ms. Misses are reported as such.

    .venv/bin/python -m bench.runtime_throughput [--sessions 1000] [--window-s 60] [--cap-s 420]

Writes ``bench/results/runtime_throughput.{json,md}``. About 8-10 minutes on two idle cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from sandbox.harness import SandboxRuntime

NAME = "runtime_throughput"
TARGETS = {"decision_p99_ms": 50.0, "deferral_p99_ms": 50.0, "concurrent_sessions": 1000}
DEFAULT_POLICIES = (ROOT / "out" / "bench" / "policy_default", ROOT / "out" / "demo" / "policy")
DEFAULT_REGISTRY = ROOT / "out" / "demo" / "registry"
PROBE_GROUP: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 10}

log = logging.getLogger("bench.runtime_throughput")


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    array = np.asarray(values)
    p50, p99 = np.percentile(array, [50, 99])
    return {
        "count": len(values),
        "p50": round(float(p50), 2),
        "p99": round(float(p99), 2),
        "max": round(float(array.max()), 2),
    }


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- the inbox probe: a consumer in its own process ------------------------------------------------------------------


def probe_main(bootstrap: str, topic: str, payload: str, out: str) -> None:
    """Consume ``topic`` in a group of its own and record, per message, broker timestamp -> received (and for a
    Deferral its ``created_at`` -> received), until SIGTERM; then write the summaries to ``out``."""
    from schemas.base import Payload
    from schemas.decision import Deferral
    from schemas.session import SessionCommand
    from service.runtime.bus.consumer import BusConsumer, MessageMeta

    types: dict[str, type[Payload]] = {"Deferral": Deferral, "SessionCommand": SessionCommand}
    from_broker: list[float] = []
    from_created: list[float] = []

    def handle(_: str, message: Payload, meta: MessageMeta) -> None:
        now_ms = time.time() * 1000.0
        from_broker.append(max(0.0, now_ms - meta.timestamp))
        if isinstance(message, Deferral):
            from_created.append(max(0.0, now_ms - message.created_at.timestamp() * 1000.0))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = BusConsumer(
        bootstrap, f"probe-{uuid.uuid4().hex[:8]}", [topic], {topic: types[payload]}, handle, None, **PROBE_GROUP
    )
    consumer.wait_for_assignment(30.0)
    print("ready", flush=True)
    try:
        consumer.run(stop, poll_timeout_ms=20)
    finally:
        consumer.close()
        Path(out).write_text(
            json.dumps({"broker_to_inbox_ms": _summary(from_broker), "created_to_inbox_ms": _summary(from_created)})
        )


class Probe:
    """``probe_main`` in a child process; ``stop`` returns its summaries."""

    def __init__(self, bootstrap: str, topic: str, payload: str, workdir: Path) -> None:
        self.out = workdir / f"probe-{uuid.uuid4().hex[:6]}.json"
        command = [
            sys.executable,
            "-m",
            "bench.runtime_throughput",
            "--probe",
            bootstrap,
            topic,
            payload,
            str(self.out),
        ]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            raise RuntimeError(f"the inbox probe did not start (said {line!r})")

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result


# ---- models -------------------------------------------------------------------------------------------------------


def load_policy(path: Path | None) -> tuple[Any, str]:
    from policy.policy import LMPolicy

    candidates = [path] if path is not None else [p for p in DEFAULT_POLICIES if (p / "policy.json").is_file()]
    if candidates:
        return LMPolicy.load(candidates[0]), str(
            candidates[0].relative_to(ROOT) if candidates[0].is_relative_to(ROOT) else candidates[0]
        )
    from policy.model import ModelConfig
    from policy.train import TrainConfig
    from sandbox.generate import iter_traces

    log.warning("no trained policy found; fitting a tiny one (the numbers then say little about the default model)")
    tiny = LMPolicy(
        model=ModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64),
        training=TrainConfig(epochs=1, batch_size=16, eval_every=20, warmup_steps=5, threads=1),
        vocab_size=600,
        progress=False,
    )
    return tiny.fit(iter_traces(40, 5)), "tiny (fitted here)"


def load_critic(registry_dir: Path, policy: Any) -> tuple[Any, str]:
    from critic.persist import load_critic as load
    from critic.registry import CriticRegistry

    registry = CriticRegistry(registry_dir)
    champion = registry.champion() if registry_dir.is_dir() else None
    if champion is not None:
        return load(registry.artifact_path(champion)), f"{champion} ({registry.manifest(champion).kind})"
    from critic.confidence import fit_on_steps
    from sandbox.generate import iter_traces

    # It learns nothing; fitting only checks the inputs. A few sessions' proposals are enough.
    critic = fit_on_steps(policy, [step for trace in iter_traces(3, 77) for step in trace.steps])
    return critic, "policy confidence (no registry champion)"


def global_threshold(value: float) -> Any:
    from critic.thresholds import SliceThresholds, ThresholdConfig, ThresholdResult

    result = ThresholdResult(value, 0, 0, 0, 0.0, 0.0, 0.0, "set by hand for the runtime benchmark")
    return SliceThresholds(ThresholdConfig(granularity="global"), {"*": result})


# ---- one configuration --------------------------------------------------------------------------------------------


def run_config(
    policy: Any,
    critic: Any,
    thresholds: Any,
    bootstrap: str,
    workdir: Path,
    *,
    sessions: int,
    batch_size: int,
    until_done: bool,
    seconds: float,
    seed: int,
) -> dict[str, Any]:
    from sandbox.platform import SandboxPlatform
    from schemas.risk import AutonomyStage
    from service.runtime.autonomy import AutonomyConfig, AutonomyStages
    from service.runtime.settings import RuntimeSettings

    label = f"{sessions} sessions, batch_size {batch_size}"
    platform = SandboxPlatform(seed=seed)
    cases = [platform.open_case(case_index=i) for i in range(sessions)]
    settings = RuntimeSettings(
        kafka_bootstrap=bootstrap,
        database_url=f"sqlite:///{workdir / f'runtime-{batch_size}-{uuid.uuid4().hex[:6]}.db'}",
        topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
        partitions=8,
        workers=1,
        batch_size=batch_size,
        lease_s=30.0,
        max_steps=40,
        audit_rate=0.05,
        operators=50,
        think_time_s=0.0,
        seed=seed,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        fetch_max_wait_ms=10,
    )
    stages = AutonomyStages(AutonomyConfig(initial_stage=AutonomyStage.AUTOPILOT))
    runtime = SandboxRuntime(platform, policy, critic, thresholds, settings, stages=stages)
    with runtime:
        assert runtime.store is not None
        worker = runtime.workers[0]
        probe = Probe(bootstrap, runtime.topics.deferrals, "Deferral", workdir)
        print(f"[{label}] {sessions} sessions start", flush=True)
        started = time.monotonic()
        runtime.start_sessions(cases)
        published_s = time.monotonic() - started
        peak_active = peak_in_worker = 0
        timeline: list[dict[str, Any]] = []
        decisions_at_full: tuple[float, int] | None = None
        last_print = started
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            counts = runtime.store.counts_by_status()
            active = counts["running"] + counts["parked"]
            in_worker = len(worker.session_ids())
            peak_active, peak_in_worker = max(peak_active, active), max(peak_in_worker, in_worker)
            decisions = sum(worker.stats()["decisions"].values())
            ended = sum(v for k, v in counts.items() if k not in ("running", "parked"))
            if decisions_at_full is None and in_worker >= sessions:
                decisions_at_full = (now, decisions)  # every session in the worker: the steady window starts
            timeline.append({"t_s": round(now - started, 1), "active": active, "ended": ended, "decisions": decisions})
            if now - last_print >= 15:
                last_print = now
                print(
                    f"[{label}] t={now - started:.0f}s active={active} ended={ended} decisions={decisions}", flush=True
                )
            if until_done and ended >= sessions:
                break
            if now - started >= seconds:
                break
        elapsed = time.monotonic() - started
        stats = runtime.stats()
        probe_result = probe.stop()
    worker_stats, pool = stats["workers"][0], stats["operators"]
    decisions = sum(worker_stats["decisions"].values())
    ended_rows = timeline[-1]["ended"]
    steady: float | None = None
    if decisions_at_full is not None and elapsed - (decisions_at_full[0] - started) > 5:
        steady = (decisions - decisions_at_full[1]) / (started + elapsed - decisions_at_full[0])
    return {
        "label": label,
        "batch_size": batch_size,
        "sessions": sessions,
        "mode": "until every session ended" if until_done else f"fixed window of {seconds:.0f} s",
        "seconds": round(elapsed, 1),
        "start_commands_published_s": round(published_s, 2),
        "all_ended": ended_rows >= sessions,
        "sessions_ended": ended_rows,
        "sessions_by_status": stats["sessions"],
        "sessions_per_s": round(ended_rows / elapsed, 2),
        "decisions": decisions,
        "decisions_per_s": round(decisions / elapsed, 1),
        "decisions_per_s_all_active": None if steady is None else round(steady, 1),
        "decisions_by_outcome": worker_stats["decisions"],
        "decisions_per_session": round(decisions / ended_rows, 1) if ended_rows >= sessions else None,
        "decision_latency_ms": worker_stats["decision_latency_ms"],
        "deferral_latency_ms": {
            "pool_broker_to_inbox": pool["publish_latency_ms"],
            "pool_created_to_inbox": pool["deferral_latency_ms"],
            "probe_broker_to_inbox": probe_result["broker_to_inbox_ms"],
            "probe_created_to_inbox": probe_result["created_to_inbox_ms"],
        },
        "answers": pool["answered"],
        "peak_active_sessions": peak_active,
        "peak_sessions_in_worker": peak_in_worker,
        "worker_phase_ms": {
            k: worker_stats.get(k) for k in ("busy_ms", "propose_ms", "score_ms", "act_ms", "prelude_ms")
        },
        "batches": worker_stats.get("batches"),
        "worker_counters": {
            k: worker_stats.get(k, 0)
            for k in (
                "executed",
                "deferred",
                "answers_applied",
                "step_failures",
                "loop_errors",
                "session_errors",
                "publish_errors",
            )
        },
        "rss_mib_after": round(_rss_mib(), 1),
        "timeline": timeline,
    }


def bus_round_trip(bootstrap: str, workdir: Path, messages: int) -> dict[str, Any]:
    """The bare bus: one small payload at a time, producer in this process -> the probe's consumer."""
    from schemas.session import SessionCommand, SessionCommandKind
    from service.runtime.bus.producer import BusProducer
    from service.runtime.bus.topics import ensure_topics

    topic = f"bench-rtt-{uuid.uuid4().hex[:6]}"
    ensure_topics(bootstrap, [topic], 8)
    probe = Probe(bootstrap, topic, "SessionCommand", workdir)
    with BusProducer(bootstrap, client_id="bench-rtt") as producer:
        for i in range(messages):
            command = SessionCommand(
                command=SessionCommandKind.START, session_id=f"s{i}", case_id=f"c{i}", process_id="p", issued_by="bench"
            )
            producer.publish(topic, command, command.session_id)
            time.sleep(0.01)
    time.sleep(1.0)
    return {"messages": messages, **probe.stop()}


# ---- report -------------------------------------------------------------------------------------------------------


def _ms(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "n/a" if value is None else f"{value:.1f} ms"


def render(result: dict[str, Any]) -> str:
    runs = result["runs"]
    main = runs[-1]
    targets = result["targets"]

    def verdict(value: float | None, target: float, higher: bool = False) -> str:
        if value is None:
            return "not measured"
        return "met" if (value >= target if higher else value <= target) else "missed"

    lines = [
        "# Runtime throughput: one worker, 1,000 concurrent sessions",
        "",
        f"Policy `{result['policy']}` (one torch thread), critic {result['critic']}, global threshold "
        f"{result['threshold']}, every slice in autopilot, audit rate 0.05; each run's sessions are started at "
        "once on fresh cases, topics and store; simulated operators in the same process, no think time. Load average "
        f"before / after: {result['load_before']} / {result['load_after']} on {result['environment']['cpu_count']} "
        "cores (other jobs shared the machine).",
        "",
        "| measure | " + " | ".join(r["label"] for r in runs) + " | target | |",
        "|---|" + "---:|" * len(runs) + "---:|---|",
    ]

    def row(name: str, values: list[str], target: str = "", status: str = "") -> None:
        lines.append(f"| {name} | " + " | ".join(values) + f" | {target} | {status} |")

    row("run", [r["mode"] for r in runs])
    row("most sessions active at once (worker)", [str(r["peak_sessions_in_worker"]) for r in runs], ">= 1000",
        verdict(main["peak_sessions_in_worker"], targets["concurrent_sessions"], higher=True))  # fmt: skip
    row("sessions ended / seconds", [f"{r['sessions_ended']} / {r['seconds']:.0f} s" for r in runs])
    row("sessions/s (ended / seconds)", [f"{r['sessions_per_s']:.2f}" for r in runs])
    row("decisions per session", [str(r["decisions_per_session"] or "n/a") for r in runs])
    row("decisions/s (whole run)", [f"{r['decisions_per_s']:.1f}" for r in runs])
    row("decisions/s (all sessions active)", [str(r["decisions_per_s_all_active"]) for r in runs])
    row("decision latency p50", [_ms(r["decision_latency_ms"], "p50") for r in runs])
    row("decision latency p99", [_ms(r["decision_latency_ms"], "p99") for r in runs], "<= 50 ms",
        " / ".join(verdict(r["decision_latency_ms"]["p99"], targets["decision_p99_ms"]) for r in runs))  # fmt: skip
    for key, name in (
        ("probe_broker_to_inbox", "deferral publish -> inbox (own process)"),
        ("pool_broker_to_inbox", "deferral publish -> inbox (pool, worker's process)"),
        ("probe_created_to_inbox", "deferral made -> inbox (own process)"),
    ):
        row(f"{name} p50", [_ms(r["deferral_latency_ms"][key], "p50") for r in runs])
        status = ""
        if key == "probe_broker_to_inbox":
            status = " / ".join(verdict(r["deferral_latency_ms"][key]["p99"], targets["deferral_p99_ms"]) for r in runs)
        row(
            f"{name} p99",
            [_ms(r["deferral_latency_ms"][key], "p99") for r in runs],
            "<= 50 ms" if status else "",
            status,
        )
    row("decisions (execute / defer / always ask)", [
        f"{r['decisions_by_outcome'].get('execute', 0)} / {r['decisions_by_outcome'].get('defer', 0)} / "
        f"{r['decisions_by_outcome'].get('always_ask', 0)}" for r in runs])  # fmt: skip
    row("worker time per decision: policy / critic / act (store, BPM, bus)", [
        " / ".join(f"{(r['worker_phase_ms'][k] or 0) / max(1, r['decisions']):.1f}" for k in ("propose_ms", "score_ms", "act_ms"))
        + " ms" for r in runs])  # fmt: skip
    row("RSS after the run", [f"{r['rss_mib_after']:.0f} MiB" for r in runs])
    rtt = result["bus_round_trip"]
    lines += [
        "",
        f"Baseline, the bare bus on the same broker ({rtt['messages']} single publishes -> a consumer in another "
        f"process): p50 {_ms(rtt['broker_to_inbox_ms'], 'p50')}, p99 {_ms(rtt['broker_to_inbox_ms'], 'p99')}. "
        f"Peak RSS of the benchmark process: {result['peak_rss_mib']:.0f} MiB. Total {result['seconds']:.0f} s. "
        f"Sustainable rate of the main run: {result['projected_sessions_per_s']} sessions/s.",
        "",
        "Decision latency is observe -> decision as the worker measures it: a session waits for the policy call of "
        "its whole batch, so it grows with ``batch_size``. Time queued before the observation is not in it.",
        "",
    ]
    head = result["headline"]
    lines += [
        f"**Headline** ({head['sessions']} concurrent sessions, batch_size {head['batch_size']}): decision latency p99 "
        f"{head['decision_latency_ms_p99']} ms (target <= {head['target_ms']:.0f} ms: "
        f"{'met' if head['met'] else 'missed'}), p50 {head['decision_latency_ms_p50']} ms, "
        f"{head['decisions_per_s']} decisions/s.",
        "",
    ]
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figure to quote: the ``--sessions`` run (1,000 by default) with the lowest decision p99, named by its
    batch size; every such run's p99 beside it."""
    full = [r for r in result["runs"] if r["sessions"] == result["sessions"]]

    def p99(run: dict[str, Any]) -> float:
        value = run["decision_latency_ms"]["p99"]
        return float("inf") if value is None else float(value)

    best = min(full, key=p99)
    return {
        "sessions": best["sessions"],
        "batch_size": best["batch_size"],
        "run": best["label"],
        "decision_latency_ms_p99": best["decision_latency_ms"]["p99"],
        "decision_latency_ms_p50": best["decision_latency_ms"]["p50"],
        "decisions_per_s": best["decisions_per_s_all_active"] or best["decisions_per_s"],
        "target_ms": result["targets"]["decision_p99_ms"],
        "met": p99(best) <= result["targets"]["decision_p99_ms"],
        "decision_latency_ms_p99_by_run": {r["label"]: r["decision_latency_ms"]["p99"] for r in full},
    }


def projected_sessions_per_s(result: dict[str, Any]) -> float | None:
    """Sessions/s the main run sustains: its decision rate with every session active over the decisions a
    session takes (measured where every session ended: the main run itself, else the smaller run)."""
    main = result["runs"][-1]
    per_session = next(
        (r["decisions_per_session"] for r in reversed(result["runs"]) if r["decisions_per_session"]), None
    )
    rate = main["decisions_per_s_all_active"]
    return None if per_session is None or rate is None else round(rate / per_session, 2)


def notes(result: dict[str, Any]) -> list[str]:
    runs = result["runs"]
    base, main = runs[0], runs[-1]
    out = []
    if base["decisions_per_s_all_active"] and main["decisions_per_s_all_active"]:
        ratio = main["decisions_per_s_all_active"] / base["decisions_per_s_all_active"]
        out.append(
            f"batch_size {main['batch_size']} decides {ratio:.2f}x as many steps per second as batch_size 1 with "
            f"{main['sessions']} sessions active, at "
            f"{(main['decision_latency_ms']['p99'] or 0) / max(1e-9, base['decision_latency_ms']['p99'] or 1):.0f}x "
            "the decision p99."
        )
    if not main["all_ended"]:
        out.append(
            f"The main run did not end every session within its cap ({main['sessions_ended']} of {main['sessions']}): "
            "the worker steps its ready sessions first in, first out, so all of them advance together and end "
            f"late. Its sustainable rate is {result['projected_sessions_per_s']} sessions/s (decisions/s with every "
            "session active over the decisions per session of the run that ended every session)."
        )
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe_main(*sys.argv[2:6])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--window-s", type=float, default=45.0, help="the batch_size 1 baseline's window")
    parser.add_argument("--cap-s", type=float, default=330.0, help="at most this long for the main run")
    parser.add_argument("--small-sessions", type=int, default=100, help="sessions of the run-to-completion check")
    parser.add_argument("--small-cap-s", type=float, default=150.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY)
    parser.add_argument("--rtt-messages", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch
    torch.set_num_threads(1)

    from service.runtime.bus.broker import EmbeddedBroker

    load_before = [round(x, 2) for x in os.getloadavg()]
    began = time.monotonic()
    policy, policy_name = load_policy(args.policy)
    critic, critic_name = load_critic(args.registry, policy)
    thresholds = global_threshold(args.threshold)
    print(f"policy {policy_name}, critic {critic_name}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        rtt = bus_round_trip(broker.bootstrap, workdir, args.rtt_messages)
        print(f"bus round trip: {rtt['broker_to_inbox_ms']}", flush=True)
        common = {
            "policy": policy,
            "critic": critic,
            "thresholds": thresholds,
            "bootstrap": broker.bootstrap,
            "workdir": workdir,
        }
        runs = [
            run_config(**common, sessions=args.sessions, batch_size=1, until_done=False, seconds=args.window_s,
                       seed=args.seed),
            run_config(**common, sessions=args.small_sessions, batch_size=args.batch_size, until_done=True,
                       seconds=args.small_cap_s, seed=args.seed + 2),
            run_config(**common, sessions=args.sessions, batch_size=args.batch_size, until_done=True,
                       seconds=args.cap_s, seed=args.seed + 1),
        ]  # fmt: skip
    result: dict[str, Any] = {
        "benchmark": NAME,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "policy": policy_name,
        "critic": critic_name,
        "threshold": args.threshold,
        "sessions": args.sessions,
        "targets": TARGETS,
        "bus_round_trip": rtt,
        "runs": runs,
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
        "seconds": round(time.monotonic() - began, 1),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "environment": environment(),
    }
    result["projected_sessions_per_s"] = projected_sessions_per_s(result)
    result["headline"] = headline(result)
    result["notes"] = notes(result)
    json_path, md_path = write_results(NAME, result, render(result), args.results)
    print(render(result))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
