"""``autopilot demo``: the main job end to end on embedded defaults.

At this stage of the project the loop is the logging stage: the sandbox BPM generates cases, simulated
operators work them on the real BPMN engine, traces are written, and a summary (with the sandbox's own ceiling
per action type and a copilot acceptance check of the best possible policy) is printed. Later stages (policy,
critic, autopilot) extend this same command.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def _demo(args: argparse.Namespace) -> int:
    from sandbox.ceiling import render_ceiling, summarise
    from sandbox.copilot import run_copilot
    from sandbox.generate import generate
    from sandbox.scenario import scenario_by_name
    from schemas import Verdict

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenario = scenario_by_name(args.scenario)
    started = time.perf_counter()

    print(f"[1/2] logging stage: {args.sessions} cases worked by simulated operators ({scenario.name} scenario)")
    traces_path = out / "traces.jsonl"
    summary = generate(args.sessions, args.seed, traces_path, scenario)
    print(summary.render())
    table = summarise(summary.ceiling_samples)  # collected while generating: no second read of the file
    print("\nSandbox ceiling (best possible policy that sees only the UI state), by action type:")
    print(render_ceiling(table))

    print(f"\n[2/2] copilot check: the best possible policy proposes, operators review ({args.copilot} cases)")
    steps = run_copilot(args.copilot, args.seed + 1, scenario=scenario, start_index=args.sessions)
    accepted: dict[str, list[bool]] = defaultdict(list)
    for step in steps:
        accepted[step.proposed.type.value].append(step.verdict == Verdict.ACCEPT)
    rates = {t: sum(v) / len(v) for t, v in sorted(accepted.items())}
    print("| action type | proposals | accepted |\n|---|---:|---:|")
    for t, v in sorted(accepted.items()):
        print(f"| {t} | {len(v)} | {rates[t]:.1%} |")

    report: dict[str, Any] = {
        "scenario": scenario.name,
        "seed": args.seed,
        "sessions": summary.sessions,
        "steps": summary.steps,
        "sessions_per_s": summary.sessions / summary.seconds,
        "correct_resolution_all_manual": summary.correct / summary.sessions,
        "avg_handling_time_s": summary.handling_time_s / summary.sessions,
        "ceiling_by_action_type": {r.group: {"action": r.action, "action_type": r.action_type} for r in table},
        "copilot_acceptance_bayes_policy": rates,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ntraces: {traces_path}\nsummary: {out / 'summary.json'}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run the main job end to end on embedded defaults")
    demo.add_argument("--out", default="out/demo", help="where traces and the summary go")
    demo.add_argument("--sessions", type=int, default=2000)
    demo.add_argument("--copilot", type=int, default=300, help="cases for the copilot acceptance check")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--scenario", default="default")
    demo.set_defaults(handler=_demo)
