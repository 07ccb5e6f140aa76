"""Replies that are right: the default policy with and without the reply guard (``policy.replies.ReplyGuard``),
judged by the sandbox's operators, and the outcome of ambiguous cases against all-manual.

Protocol: the default policy (``out/bench/policy_default``) on ``--sessions`` new cases of the calibrated default
scenario (indices from 9000 on, seed 7), two ways:

1. **copilot**: every proposal reviewed by the simulated operators. Reported per arm: the share of reply
   proposals (send_text_to_chat) that are acceptable by the sandbox's truth (right intent, right facts), the
   operators' acceptance of replies, the share of select proposals that were guesses or wrong, and model errors
   overall;
2. **policy alone**: every step executed as proposed, no operator (the policy's own outcome); reported per arm:
   correct resolution of all cases and of the ambiguous ones (the customer's preference not stated), beside the
   simulated operators working the same cases by hand (all-manual).

    .venv/bin/python -m bench.policy_replies [--sessions 400]

Writes ``bench/results/policy_replies.{json,md}``.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT, environment, write_results
from policy.replies import with_reply_guard
from sandbox.copilot import run_copilot_batched
from sandbox.generate import iter_traces
from sandbox.platform import MAX_STEPS, CaseEnded, SandboxPlatform
from sandbox.scenario import scenario_by_name
from schemas import ActionValidationError, Proposal, UIState, Verdict

NAME = "policy_replies"
POLICY_DIR = ROOT / "out" / "bench" / "policy_default"
START = 9000

Propose = Callable[[Sequence[UIState]], Sequence[Proposal | None]]


def copilot_figures(propose: Propose, sessions: int, seed: int) -> dict[str, Any]:
    replies = replies_ok = replies_accepted = selects = selects_wrong = rows = wrong = 0
    for step in run_copilot_batched(
        sessions, seed, propose, action_of=lambda p: p.action, scenario=scenario_by_name("default"), start_index=START
    ):
        rows += 1
        wrong += not step.acceptable
        if step.proposed.type == "send_text_to_chat":
            replies += 1
            replies_ok += step.acceptable
            replies_accepted += step.verdict == Verdict.ACCEPT
        elif step.proposed.type == "select_option":
            selects += 1
            selects_wrong += not step.acceptable
    return {
        "proposals": rows,
        "unacceptable_share": wrong / rows,
        "replies": replies,
        "reply_acceptable_share": replies_ok / replies,
        "reply_accepted_share": replies_accepted / replies,
        "selects": selects,
        "select_unacceptable_share": selects_wrong / selects,
    }


def policy_alone(propose: Propose, sessions: int, seed: int, concurrency: int = 64) -> list[dict[str, Any]]:
    """Every step executed as the policy proposes it, the cases kept open in lockstep so proposals are batched.
    Returns each case's outcome and whether its request was ambiguous."""
    platform = SandboxPlatform(scenario_by_name("default"), seed)
    out: list[dict[str, Any]] = []
    pending = list(range(START, START + sessions))
    open_cases: list[str] = []
    turns: dict[str, int] = {}

    def finish(case_id: str) -> None:
        case = platform.case(case_id)
        out.append({"correct": bool(platform.outcome(case_id)["correct"]), "ambiguous": case.seed.ambiguous})
        platform.forget(case_id)

    while pending or open_cases:
        while pending and len(open_cases) < concurrency:
            case_id = platform.open_case(case_index=pending.pop(0))
            open_cases.append(case_id)
            turns[case_id] = 0
        states = []
        for case_id in open_cases:
            platform.nudge(case_id)
            states.append(platform.observe(case_id))
        proposals = propose(states)
        still = []
        for case_id, proposal in zip(open_cases, proposals, strict=True):
            turns[case_id] += 1
            stuck = proposal is None
            if proposal is not None:
                try:
                    platform.act(case_id, proposal.action)
                except (ActionValidationError, CaseEnded):
                    stuck = True  # an unfinished case counts as not correctly resolved
            if stuck or platform.case(case_id).ended or turns[case_id] >= MAX_STEPS:
                finish(case_id)
            else:
                still.append(case_id)
        open_cases = still
    return out


def outcome_figures(cases: list[dict[str, Any]]) -> dict[str, Any]:
    ambiguous = [c for c in cases if c["ambiguous"]]
    return {
        "cases": len(cases),
        "correct": sum(c["correct"] for c in cases) / len(cases),
        "ambiguous_cases": len(ambiguous),
        "correct_ambiguous": sum(c["correct"] for c in ambiguous) / len(ambiguous) if ambiguous else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=POLICY_DIR)
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    import torch

    from policy.policy import LMPolicy

    torch.set_num_threads(1)
    random.seed(args.seed)
    policy = LMPolicy.load(args.policy)
    arms: dict[str, Propose] = {
        "policy": policy.propose_batch,
        "policy + reply guard": with_reply_guard(policy).propose_batch,
    }
    copilot = {name: copilot_figures(propose, args.sessions, args.seed) for name, propose in arms.items()}
    alone = {name: outcome_figures(policy_alone(propose, args.sessions, args.seed)) for name, propose in arms.items()}
    manual_traces = iter_traces(args.sessions, args.seed, scenario_by_name("default"), start_index=START)
    manual = outcome_figures(
        [
            {"correct": bool(t.ground_truth["outcome"]["correct"]), "ambiguous": bool(t.ground_truth["ambiguous"])}
            for t in manual_traces
        ]
    )
    result = {"sessions": args.sessions, "copilot": copilot, "policy_alone": alone, "all_manual": manual}
    result["environment"] = environment()
    lines = [
        "# Replies that are right: the reply guard on the default policy",
        "",
        f"`python -m bench.policy_replies --sessions {args.sessions}`: {args.sessions} new cases of the calibrated "
        "default scenario, the same cases in every arm.",
        "",
        "## Copilot: proposals judged by the sandbox's operators",
        "",
        "| arm | proposals | unacceptable | replies | acceptable replies (right intent and facts) | replies accepted "
        "by operators | selects | guessed or wrong selects |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in copilot.items():
        lines.append(
            f"| {name} | {c['proposals']} | {c['unacceptable_share']:.1%} | {c['replies']} | "
            f"{c['reply_acceptable_share']:.1%} | {c['reply_accepted_share']:.1%} | {c['selects']} | "
            f"{c['select_unacceptable_share']:.1%} |"
        )
    lines += [
        "",
        "## Policy alone: every proposal executed, against all-manual",
        "",
        "| who works the cases | cases | correct resolution | ambiguous cases | correct on ambiguous |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [*alone.items(), ("all-manual (simulated operators)", manual)]
    for name, o in rows:
        amb = "-" if o["correct_ambiguous"] is None else f"{o['correct_ambiguous']:.1%}"
        lines.append(f"| {name} | {o['cases']} | {o['correct']:.1%} | {o['ambiguous_cases']} | {amb} |")
    lines += [""]
    markdown = "\n".join(lines)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
