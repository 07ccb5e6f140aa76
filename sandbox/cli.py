"""``autopilot sandbox generate|serve|ceiling``: the reference BPM platform from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from schemas.argtypes import positive_int


def _generate(args: argparse.Namespace) -> int:
    from sandbox.generate import generate
    from sandbox.scenario import scenario_by_name

    summary = generate(args.sessions, args.seed, Path(args.out), scenario_by_name(args.scenario), args.start)
    print(summary.render())
    print(f"traces written to {args.out}")
    return 0


def _ceiling(args: argparse.Namespace) -> int:
    from importers.jsonl import read_traces
    from sandbox.ceiling import ceiling_table, render_ceiling

    print(render_ceiling(ceiling_table(read_traces(Path(args.traces)))))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from sandbox.api import create_app
    from sandbox.scenario import scenario_by_name

    uvicorn.run(create_app(scenario_by_name(args.scenario), args.seed), host=args.host, port=args.port)
    return 0


def _collect(args: argparse.Namespace) -> int:
    from critic.feedback import write_feedback
    from policy.combined import load_policy
    from sandbox.feedback_collection import collect_copilot_feedback
    from sandbox.scenario import scenario_by_name

    policy = load_policy(args.policy)  # a combined policy or an LM policy
    feedback = collect_copilot_feedback(
        policy, args.sessions, args.seed, scenario_by_name(args.scenario), start_index=args.start_index
    )
    path = write_feedback(feedback.records, args.out, truth=feedback.truth)
    print(json.dumps(feedback.summary(), indent=1))
    print(f"{len(feedback.records)} feedback rows written to {path}")
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser("sandbox", help="the reference BPM platform")
    sub = parser.add_subparsers(dest="sandbox_command", required=True, metavar="SUBCOMMAND")

    gen = sub.add_parser("generate", help="let simulated operators work N cases and write traces (JSONL)")
    gen.add_argument("--sessions", type=positive_int, required=True, help="number of cases")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, help="output JSONL path")
    gen.add_argument(
        "--scenario",
        default="default",
        help="default (the calibrated world), classic, drift, new_process, long_tail, only_new",
    )
    gen.add_argument("--start", type=int, default=0, help="first case index (to continue a stream)")
    gen.set_defaults(handler=_generate)

    ceil = sub.add_parser("ceiling", help="the Bayes ceiling per action type of a trace file")
    ceil.add_argument("traces")
    ceil.set_defaults(handler=_ceiling)

    serve = sub.add_parser("serve", help="serve the sandbox's REST task API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8081)
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--scenario", default="default")
    serve.set_defaults(handler=_serve)

    collect = sub.add_parser("collect", help="copilot sessions: the policy proposes, operators review")
    collect.add_argument("--policy", required=True, help="policy checkpoint directory")
    collect.add_argument("--sessions", type=positive_int, required=True)
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--scenario", default="default")
    collect.add_argument("--start-index", type=int, default=0, help="first case index (after the training cases)")
    collect.add_argument("--out", required=True, help="feedback JSONL to write")
    collect.set_defaults(handler=_collect)
