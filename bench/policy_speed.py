"""Proposal latency and throughput of a trained policy on CPU: the fast scoring path against the reference path.

Both paths run in the same process on the same states, interleaved round by round (a shared machine's load
then weighs on both alike); each reported number is the median over ``--rounds`` rounds.

* latency: one state at a time on one thread (what a copilot sidebar or one session step waits for), p50/p90/p99
  over every step of the test sessions, after a warm-up; wall clock, and the thread's CPU time beside it (less
  sensitive to other processes on the machine). Targets: p50 <= 3 ms, p99 <= 10 ms.
* bare forward (the baseline of the ratio): serialising the state, encoding it and one plain ``transformers``
  forward over the prompt, no candidates; target: proposal p50 / bare forward p50 <= 1.5.
* throughput on two cores: two threads, each proposing batches of ``--batch`` states with one torch thread
  (the deployable shape: two workers or two batcher threads), and, beside it, one thread with two torch threads
  (intra-op, on the first 128 states only: it is slow when other processes share the cores), and the policy in
  two processes of its own (``policy.process.PolicyProcesses``, fast path: each call of ``2 x --batch`` states is
  split between them; the states go to the children and the proposals come back, so the copying is counted).
  Target: >= 1,000 proposals/s.

    .venv/bin/python -m bench.policy_speed --model DIR --traces T.jsonl [--skip 2000] [--sessions 200]

Writes ``bench/results/policy_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import environment, peak_rss_kib, write_results
from importers.jsonl import read_traces
from policy.fast_scoring import supports
from policy.policy import LMPolicy
from policy.process import PolicyProcesses
from schemas.state import UIState

NAME = "policy_speed"
INTRA_OP_STATES = 128
TARGETS = {"p50_ms": 3.0, "p99_ms": 10.0, "ratio_to_bare_forward": 1.5, "batched_per_s": 1000.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9), "p99": percentile(values, 0.99)}


def single_latencies(policy: LMPolicy, states: list[UIState]) -> tuple[list[float], list[float]]:
    """(wall ms, thread CPU ms) per proposal, one state at a time on one torch thread."""
    torch.set_num_threads(1)
    for state in states[:20]:  # warm-up: allocator, tokenizer caches
        policy.propose(state)
    wall, cpu = [], []
    for state in states:
        started, started_cpu = time.perf_counter(), time.thread_time()
        policy.propose(state)
        cpu.append((time.thread_time() - started_cpu) * 1000)
        wall.append((time.perf_counter() - started) * 1000)
    return wall, cpu


def bare_forward_latencies(policy: LMPolicy, states: list[UIState]) -> list[float]:
    codec, model, _ = policy._require()
    torch.set_num_threads(1)
    out = []
    with torch.inference_mode():
        for state in states:
            started = time.perf_counter()
            ids = codec.encode_prompt(policy.prompt(state))
            model(torch.tensor([ids]))
            out.append((time.perf_counter() - started) * 1000)
    return out


def _propose_all(policy: LMPolicy | PolicyProcesses, states: list[UIState], batch: int) -> None:
    for i in range(0, len(states), batch):
        policy.propose_batch(states[i : i + batch])


def two_thread_rate(policy: LMPolicy, states: list[UIState], batch: int) -> float:
    """Proposals/s with two Python threads (one torch thread each), each proposing half of the states."""
    torch.set_num_threads(1)
    halves = [states[0::2], states[1::2]]
    start = threading.Barrier(3)

    def work(part: list[UIState]) -> None:
        start.wait()
        _propose_all(policy, part, batch)

    threads = [threading.Thread(target=work, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    start.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return len(states) / (time.perf_counter() - started)


def process_rate(processes: PolicyProcesses, states: list[UIState], batch: int) -> float:
    """Proposals/s with the policy in ``processes`` (each call of ``batch`` states per child split between them)."""
    step = batch * processes.processes
    processes.propose_batch(states[:step])  # warm
    started = time.perf_counter()
    _propose_all(processes, states, step)
    return len(states) / (time.perf_counter() - started)


def intra_op_rate(policy: LMPolicy, states: list[UIState], batch: int, threads: int) -> float:
    """Proposals/s from one Python thread with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    _propose_all(policy, states, batch)
    rate = len(states) / (time.perf_counter() - started)
    torch.set_num_threads(1)
    return rate


def _round(policy: LMPolicy, states: list[UIState], batch: int, fast: bool) -> dict[str, Any]:
    policy.fast_scoring = fast
    wall, cpu = single_latencies(policy, states)
    return {
        "latency_ms": _summary(wall),
        "cpu_ms": _summary(cpu),
        "batched_proposals_per_s": {
            "2_threads": two_thread_rate(policy, states, batch),
            # on a shared machine two OpenMP threads spin-wait on each other: measured on a slice only
            "2_torch_threads_1_thread": intra_op_rate(policy, states[:INTRA_OP_STATES], batch, 2),
            "1_thread": intra_op_rate(policy, states, batch, 1),
        },
    }


def _median_of(rounds: list[dict[str, Any]], pick: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(pick(r) for r in rounds)


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Every leaf of the per-round dictionaries as its median over the rounds."""
    out: dict[str, Any] = {}
    for group, inner in rounds[0].items():
        out[group] = {key: _median_of(rounds, lambda r, g=group, k=key: r[g][k]) for key in inner}
    return out


def run(model_dir: Path, traces_path: Path, sessions: int, skip: int, rounds: int, batch: int) -> dict[str, Any]:
    policy = LMPolicy.load(model_dir)
    codec, model, _ = policy._require()
    traces = list(read_traces(traces_path))[skip : skip + sessions]
    states = [step.state for trace in traces for step in trace.steps]
    candidates = [len(policy.candidates(s)) for s in states]
    prompt_tokens = [len(codec.encode_prompt(policy.prompt(s))) for s in states]
    per_round: dict[str, list[dict[str, Any]]] = {"fast": [], "reference": []}
    bare_p50: list[float] = []
    loads = []
    with PolicyProcesses(model_dir, processes=2, reply_guard=False) as processes:
        for _ in range(rounds):
            loads.append(list(environment()["load_average"]))
            per_round["fast"].append(_round(policy, states, batch, fast=True))
            per_round["fast"][-1]["batched_proposals_per_s"]["2_processes"] = process_rate(processes, states, batch)
            per_round["reference"].append(_round(policy, states, batch, fast=False))
            bare_p50.append(percentile(bare_forward_latencies(policy, states), 0.5))
    fast, reference = _medians(per_round["fast"]), _medians(per_round["reference"])
    bare = statistics.median(bare_p50)
    history = policy.history_
    return {
        "model": str(model_dir),
        "model_version": policy.version_,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "fast_path_supported": supports(model),
        "states": len(states),
        "rounds": rounds,
        "batch": batch,
        "prompt_tokens": {"median": statistics.median(prompt_tokens), "max": max(prompt_tokens)},
        "candidates_per_state": {"mean": statistics.mean(candidates), "max": max(candidates)},
        # the headline keys: the fast path (the default)
        "latency_ms": fast["latency_ms"],
        "cpu_ms": fast["cpu_ms"],
        "batched_proposals_per_s": fast["batched_proposals_per_s"],
        "bare_forward_ms": {"p50": bare, "per_round_p50": bare_p50},
        "latency_over_bare_forward_p50": fast["latency_ms"]["p50"] / bare,
        "reference": {
            **reference,
            "latency_over_bare_forward_p50": reference["latency_ms"]["p50"] / bare,
        },
        "speedup_over_reference": {
            "latency_p50": reference["latency_ms"]["p50"] / fast["latency_ms"]["p50"],
            "latency_p99": reference["latency_ms"]["p99"] / fast["latency_ms"]["p99"],
            "batched_2_threads": fast["batched_proposals_per_s"]["2_threads"]
            / reference["batched_proposals_per_s"]["2_threads"],
        },
        "per_round": per_round,
        "load_average_per_round": loads,
        "training_seconds": history.seconds if history else None,
        "peak_rss_mib": peak_rss_kib() / 1024,
        "targets": TARGETS,
        "environment": environment(),
    }


def render(result: dict[str, Any]) -> str:
    fast, ref = result, result["reference"]
    lat, rate = fast["latency_ms"], fast["batched_proposals_per_s"]

    def mark(ok: bool) -> str:
        return "met" if ok else "missed"

    loads = ", ".join(f"{r[0]:.1f}" for r in result["load_average_per_round"])
    return "\n".join(
        [
            "# Policy proposal speed (CPU)",
            "",
            f"Model `{result['model_version']}` ({result['model_parameters'] / 1e6:.2f}M parameters), "
            f"{result['states']} states, prompts of {result['prompt_tokens']['median']:.0f} tokens (median), "
            f"{result['candidates_per_state']['mean']:.1f} candidates per state on average "
            f"(max {result['candidates_per_state']['max']}). Medians of {result['rounds']} rounds; each round "
            "measures the fast and the reference path on the same states. The two cores were shared with other "
            f"work: 1-minute load average at the start of each round {loads}.",
            "",
            "| measure | fast path | reference path | target | |",
            "|---|---:|---:|---:|---|",
            f"| latency p50, 1 thread | {lat['p50']:.2f} ms | {ref['latency_ms']['p50']:.2f} ms | <= 3 ms | "
            f"{mark(lat['p50'] <= TARGETS['p50_ms'])} |",
            f"| latency p90, 1 thread | {lat['p90']:.2f} ms | {ref['latency_ms']['p90']:.2f} ms | | |",
            f"| latency p99, 1 thread | {lat['p99']:.2f} ms | {ref['latency_ms']['p99']:.2f} ms | <= 10 ms | "
            f"{mark(lat['p99'] <= TARGETS['p99_ms'])} |",
            f"| CPU time p50 / p99, 1 thread | {fast['cpu_ms']['p50']:.2f} / {fast['cpu_ms']['p99']:.2f} ms | "
            f"{ref['cpu_ms']['p50']:.2f} / {ref['cpu_ms']['p99']:.2f} ms | | |",
            f"| proposal / bare forward (p50) | {result['latency_over_bare_forward_p50']:.2f}x | "
            f"{ref['latency_over_bare_forward_p50']:.2f}x | <= 1.5x | "
            f"{mark(result['latency_over_bare_forward_p50'] <= TARGETS['ratio_to_bare_forward'])} |",
            f"| batched, 2 threads x 1 torch thread | {rate['2_threads']:.0f} /s | "
            f"{ref['batched_proposals_per_s']['2_threads']:.0f} /s | >= 1000 /s | "
            f"{mark(rate['2_threads'] >= TARGETS['batched_per_s'])} |",
            f"| batched, 2 processes x 1 torch thread (`policy.process`) | {rate['2_processes']:.0f} /s | | "
            f"| {mark(rate['2_processes'] >= TARGETS['batched_per_s'])} |",
            f"| batched, 1 thread x 2 torch threads | {rate['2_torch_threads_1_thread']:.0f} /s | "
            f"{ref['batched_proposals_per_s']['2_torch_threads_1_thread']:.0f} /s | | |",
            f"| batched, 1 thread | {rate['1_thread']:.0f} /s | {ref['batched_proposals_per_s']['1_thread']:.0f} /s "
            "| | |",
            "",
            f"Baseline: bare forward of the prompt (serialise, encode, one `transformers` forward) p50 "
            f"{result['bare_forward_ms']['p50']:.2f} ms. Fast over reference: "
            f"{result['speedup_over_reference']['latency_p50']:.2f}x at p50, "
            f"{result['speedup_over_reference']['latency_p99']:.2f}x at p99, "
            f"{result['speedup_over_reference']['batched_2_threads']:.2f}x batched. Batches of {result['batch']} "
            f"states. Peak RSS {result['peak_rss_mib']:.0f} MiB.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--traces", required=True, type=Path)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--skip", type=int, default=0, help="sessions to skip first (the training part)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="states per propose_batch call when batching")
    args = parser.parse_args(argv)
    result = run(args.model, args.traces, args.sessions, args.skip, args.rounds, args.batch)
    markdown = render(result)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
