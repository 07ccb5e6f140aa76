"""Proposal latency and throughput of a trained policy on CPU.

* latency: one state at a time on one thread (what a copilot sidebar or one session step waits for), p50/p99
  over every step of the test sessions, after a warm-up; targets p50 <= 10 ms, p99 <= 30 ms.
* throughput: batches of 64 states on both cores (background sessions), proposals/s; target >= 300/s.
* baseline in the same run: the bare forward pass of the same model over the same prompts (no candidates),
  so the ratio shows what candidate scoring costs on top of reading the state.

    .venv/bin/python -m bench.policy_speed --model DIR --traces T.jsonl [--skip 2000] [--sessions 200]

Writes ``bench/results/policy_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.common import environment, peak_rss_kib, write_results
from importers.jsonl import read_traces
from policy.candidates import enumerate_candidates
from policy.policy import LMPolicy
from policy.serialise import serialise_state
from schemas.state import UIState

NAME = "policy_speed"
TARGETS = {"p50_ms": 10.0, "p99_ms": 30.0, "batched_per_s": 300.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def single_latencies(policy: LMPolicy, states: list[UIState]) -> list[float]:
    torch.set_num_threads(1)
    for state in states[:20]:  # warm-up: allocator, tokenizer caches
        policy.propose(state)
    out = []
    for state in tqdm(states, desc="latency (1 thread)", unit="state"):
        started = time.perf_counter()
        policy.propose(state)
        out.append((time.perf_counter() - started) * 1000)
    return out


def bare_forward_latencies(policy: LMPolicy, states: list[UIState]) -> list[float]:
    codec, model, _ = policy._require()
    torch.set_num_threads(1)
    out = []
    with torch.inference_mode():
        for state in states:
            started = time.perf_counter()
            ids = codec.encode_prompt(serialise_state(state, policy.serial))
            model(torch.tensor([ids]))
            out.append((time.perf_counter() - started) * 1000)
    return out


def batched_rate(policy: LMPolicy, states: list[UIState], threads: int, batch: int = 64, repeats: int = 3) -> float:
    torch.set_num_threads(threads)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(states), batch):
            policy.propose_batch(states[i : i + batch])
        rates.append(len(states) / (time.perf_counter() - started))
    return statistics.median(rates)


def run(model_dir: Path, traces_path: Path, sessions: int, skip: int = 0) -> dict[str, Any]:
    policy = LMPolicy.load(model_dir)
    traces = list(read_traces(traces_path))[skip : skip + sessions]
    states = [step.state for trace in traces for step in trace.steps]
    _, _, bank = policy._require()
    candidates = [len(enumerate_candidates(s, bank)) for s in states]
    lat = single_latencies(policy, states)
    bare = bare_forward_latencies(policy, states)
    rate = batched_rate(policy, states, threads=2, repeats=1)
    rate_one = batched_rate(policy, states, threads=1, repeats=1)
    history = policy.history_
    return {
        "model": str(model_dir),
        "model_version": policy.version_,
        "states": len(states),
        "candidates_per_state": {"mean": statistics.mean(candidates), "max": max(candidates)},
        "latency_ms": {"p50": percentile(lat, 0.5), "p90": percentile(lat, 0.9), "p99": percentile(lat, 0.99)},
        "bare_forward_ms": {"p50": percentile(bare, 0.5), "p99": percentile(bare, 0.99)},
        "latency_over_bare_forward_p50": percentile(lat, 0.5) / percentile(bare, 0.5),
        "batched_proposals_per_s": {"2_threads": rate, "1_thread": rate_one},
        "training_seconds": history.seconds if history else None,
        "peak_rss_mib": peak_rss_kib() / 1024,
        "targets": TARGETS,
        "environment": environment(),
    }


def render(result: dict[str, Any]) -> str:
    lat, rate = result["latency_ms"], result["batched_proposals_per_s"]

    def mark(ok: bool) -> str:
        return "met" if ok else "missed"

    return "\n".join(
        [
            "# Policy proposal speed (CPU)",
            "",
            f"Model `{result['model_version']}`, {result['states']} states, "
            f"{result['candidates_per_state']['mean']:.1f} candidates per state on average "
            f"(max {result['candidates_per_state']['max']}). Load average while measuring: "
            f"{', '.join(f'{x:.1f}' for x in result['environment']['load_average'])}.",
            "",
            "| measure | value | target | |",
            "|---|---:|---:|---|",
            f"| latency p50, 1 thread | {lat['p50']:.1f} ms | <= 10 ms | {mark(lat['p50'] <= 10)} |",
            f"| latency p99, 1 thread | {lat['p99']:.1f} ms | <= 30 ms | {mark(lat['p99'] <= 30)} |",
            f"| batched, 2 threads | {rate['2_threads']:.0f} proposals/s | >= 300/s | "
            f"{mark(rate['2_threads'] >= 300)} |",
            f"| batched, 1 thread | {rate['1_thread']:.0f} proposals/s | | |",
            f"| baseline: bare forward of the prompt p50 | {result['bare_forward_ms']['p50']:.1f} ms | | |",
            f"| proposal / bare forward (p50) | {result['latency_over_bare_forward_p50']:.2f}x | | |",
            f"| peak RSS | {result['peak_rss_mib']:.0f} MiB | | |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--traces", required=True, type=Path)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--skip", type=int, default=0, help="sessions to skip first (the training part)")
    args = parser.parse_args(argv)
    result = run(args.model, args.traces, args.sessions, args.skip)
    markdown = render(result)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
