"""The calibrated sandbox against the paper's one-week copilot statistics, measured with the default policy.

Protocol: the default policy (``out/bench/policy_default``, trained on cases 0..1999 of seed 7 of the default
scenario with the configuration of ``bench.policy_sandbox``: four epochs on one thread; trained here if missing)
proposes every step of ``--sessions`` later cases (indices 2500 on, seed 7) in copilot mode, and the simulated
operators review each proposal. These are the same rows ``bench.critic_sandbox`` trains the critic on (cached in
``out/bench``). Reported:

- operator acceptance per action type against the paper's one-week figures (transfer_chat 91.7%, click_control
  86.7%, close_chat 84.8%, send_text_to_chat 50.8%), and the rejection reasons against its annotated mix (model
  error 43.2%, acceptable alternative 37.2%, environment 6.9%, other 12.7%); target: every figure within 5 points;
- where the model errors come from: the error rate of the policy's proposals in cases with and without each hard
  feature (a second request, a follow-up question, a mistyped or another order's number, an open preference, an
  upset customer, a long chat), how they concentrate over cases, and by screen;
- that every environment rejection is visible in the environment: the case's next state has changed (another
  etag, with a new customer message or a tool's error panel).

    .venv/bin/python -m bench.sandbox_calibration [--sessions 3000]

Writes ``bench/results/sandbox_calibration.{json,md}`` (``acceptance`` per action type, ``rejection_causes``).
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.common import ROOT, environment, write_results
from bench.critic_sandbox import COPILOT_SESSIONS, copilot_feedback, copilot_feedback_path
from critic.feedback import read_truth
from sandbox.platform import SandboxPlatform
from sandbox.processes.customers import second_request_topic
from sandbox.scenario import scenario_by_name
from sandbox.view import ORDER_RE, View
from schemas import ChatRole, FeedbackRecord, RejectReason

NAME = "sandbox_calibration"
POLICY_DIR = ROOT / "out" / "bench" / "policy_default"
WORK = ROOT / "out" / "bench"
PAPER_ACCEPTANCE = {
    "transfer_chat": 0.917,
    "click_control": 0.867,
    "close_chat": 0.848,
    "send_text_to_chat": 0.508,
}
PAPER_CAUSES = {"model_error": 0.432, "acceptable_alternative": 0.372, "environment": 0.069, "other": 0.127}
TOLERANCE = 0.05
LONG_CHAT = 8  # messages: a chat this long no longer fits the default policy's prompt (its last 4 messages)


def default_policy(policy_dir: Path, seed: int) -> Path:
    """The default policy, trained as ``bench.policy_sandbox`` trains it if it is not there yet."""
    if (policy_dir / "policy.json").is_file():
        return policy_dir
    import torch

    from bench.policy_sandbox import sandbox_traces
    from policy.policy import LMPolicy
    from policy.train import TrainConfig

    torch.set_num_threads(1)
    traces = sandbox_traces(2500, seed, "default", WORK)[:2000]
    LMPolicy(training=TrainConfig(epochs=4, threads=1), progress=True).fit(traces).save(policy_dir)
    return policy_dir


def case_features(case_indexes: Sequence[int], seed: int, scenario: str) -> dict[int, dict[str, bool]]:
    """What makes each case hard, read from the sandbox's own case seeds (regenerated: deterministic per index)."""
    platform = SandboxPlatform(scenario_by_name(scenario), seed)
    out: dict[int, dict[str, bool]] = {}
    for index in sorted(set(case_indexes)):
        case = platform.case(platform.open_case(case_index=index))
        facts = case.seed.facts
        first = case.seed.first_message
        view = View(case.spec.process_id, case.screen_id, {}, {}, case.chat, world=platform.scenario.world)
        typed = ORDER_RE.findall(first)
        out[index] = {
            "second request": second_request_topic(view) is not None,
            "follow-up question": bool(facts.get("followup")),
            "another order's number quoted": bool(facts.get("quoted_other_order")),
            "mistyped order number": bool(typed)
            and f"ORD-{typed[-1]}" != facts.get("order_id")
            and not facts.get("quoted_other_order"),
            "preference left open": bool(case.seed.ambiguous),
            "upset customer": facts.get("upset") == "yes",
        }
        platform.forget(case.case_id)
    return out


def share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def cases_without_unacceptable(records: Sequence[FeedbackRecord], truth: Sequence[bool] | None) -> float | None:
    """The share of cases in which the sandbox's truth calls every proposal acceptable: roughly the most an
    autopilot that executed exactly the acceptable steps could finish without a human (roughly: where the operator
    took an acceptable alternative, the autopilot's own trajectory would differ from the one reviewed here)."""
    if truth is None:
        return None
    if len(truth) != len(records):
        raise ValueError(f"truth has {len(truth)} rows for {len(records)} feedback records")
    clean: dict[str, bool] = {}
    for record, acceptable in zip(records, truth, strict=True):
        clean[record.state.case_id] = clean.get(record.state.case_id, True) and acceptable
    return sum(clean.values()) / len(clean) if clean else None


def measure(records: list[FeedbackRecord], truth: list[bool] | None, seed: int, scenario: str) -> dict[str, Any]:
    by_type: dict[str, list[bool]] = defaultdict(list)
    causes: Counter[str] = Counter()
    for r in records:
        by_type[r.proposal.action.type.value].append(r.accepted)
        if not r.accepted and r.reason is not None:
            causes[r.reason.value] += 1
    rejections = sum(causes.values())
    acceptance = {t: sum(v) / len(v) for t, v in sorted(by_type.items())}
    rejection_causes = {reason: causes[reason] / rejections for reason in PAPER_CAUSES}

    # Model errors: where they arise.
    case_index = {r.state.case_id: int(r.state.case_id.rsplit("-", 1)[1]) for r in records}
    features = case_features(list(case_index.values()), seed, scenario)
    longest: dict[str, int] = defaultdict(int)
    for r in records:
        longest[r.state.case_id] = max(longest[r.state.case_id], len(r.state.chat))
    errors_per_case: Counter[str] = Counter()
    rows_per_case: Counter[str] = Counter()
    by_feature: dict[str, dict[bool, list[int]]] = defaultdict(lambda: {True: [0, 0], False: [0, 0]})
    by_screen: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        model_error = not r.accepted and r.reason == RejectReason.MODEL_ERROR
        case = r.state.case_id
        rows_per_case[case] += 1
        errors_per_case[case] += model_error
        flags = dict(features[case_index[case]])
        flags["long chat (8+ messages)"] = longest[case] >= LONG_CHAT
        flags["any of these"] = any(flags.values())
        for name, present in flags.items():
            by_feature[name][present][0] += model_error
            by_feature[name][present][1] += 1
        key = f"{r.state.process_id}/{r.state.screen.screen_id}"
        by_screen[key][0] += model_error
        by_screen[key][1] += 1
    total_errors = sum(errors_per_case.values())
    ranked = sorted(errors_per_case.values(), reverse=True)
    top_decile = ranked[: max(1, len(ranked) // 10)]
    feature_rows = {
        name: {
            "with": {"rows": v[True][1], "model_error_rate": share(v[True][0], v[True][1])},
            "without": {"rows": v[False][1], "model_error_rate": share(v[False][0], v[False][1])},
            "share_of_model_errors": share(v[True][0], total_errors),
        }
        for name, v in by_feature.items()
    }
    screens = sorted(by_screen.items(), key=lambda kv: -kv[1][0])[:12]

    # Environment rejections are visible: the same case's next state has changed under the proposal.
    environment_rows = visible = 0
    for a, b in pairwise(sorted(records, key=lambda r: r.created_at)):
        if a.reason != RejectReason.ENVIRONMENT:
            continue
        environment_rows += 1
        customer_messages = sum(m.role == ChatRole.CUSTOMER for m in a.state.chat)
        new_message = sum(m.role == ChatRole.CUSTOMER for m in b.state.chat) > customer_messages
        tool_failed = any("error" in panel.fields for panel in b.state.panels.values())
        visible += a.state.case_id == b.state.case_id and b.state.etag != a.state.etag and (new_message or tool_failed)
    return {
        "rows": len(records),
        "cases": len(rows_per_case),
        "acceptance": acceptance,
        "acceptance_overall": sum(r.accepted for r in records) / len(records),
        "rows_per_action_type": {t: len(v) for t, v in sorted(by_type.items())},
        "rejections": rejections,
        "rejection_causes": rejection_causes,
        "rejection_counts": dict(causes),
        "unacceptable_share_of_proposals": None if truth is None else 1 - sum(truth) / len(truth),
        "cases_without_unacceptable_proposal": cases_without_unacceptable(records, truth),
        "model_errors": {
            "count": total_errors,
            "share_of_proposals": total_errors / len(records),
            "cases_with_one_or_more": sum(1 for e in errors_per_case.values() if e) / len(rows_per_case),
            "share_in_top_decile_of_cases": sum(top_decile) / total_errors if total_errors else None,
            "by_case_feature": feature_rows,
            "top_screens": [{"screen": k, "model_errors": e, "rows": n} for k, (e, n) in screens],
        },
        "environment_rejections": {"count": environment_rows, "visible": visible},
    }


def compare(result: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for t, paper in PAPER_ACCEPTANCE.items():
        ours = result["acceptance"].get(t)
        rows.append({"figure": f"acceptance {t}", "sandbox": ours, "paper": paper})
    for reason, paper in PAPER_CAUSES.items():
        rows.append({"figure": f"rejections: {reason}", "sandbox": result["rejection_causes"][reason], "paper": paper})
    for row in rows:
        row["difference"] = None if row["sandbox"] is None else row["sandbox"] - row["paper"]
        row["within_5_points"] = row["difference"] is not None and abs(row["difference"]) <= TOLERANCE
    return {"rows": rows, "met": all(r["within_5_points"] for r in rows)}


def render(result: dict[str, Any], command: str) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    check = result["comparison"]
    lines = [
        "# The calibrated sandbox against the paper's copilot statistics",
        "",
        f"`{command}`: the default policy (bare, without the reply guard, like the paper's copilot) reviewed in copilot mode on {result['cases']} new cases of the default "
        f"scenario ({result['rows']} proposals, {result['rejections']} rejections; overall acceptance "
        f"{pct(result['acceptance_overall'])}). Load average at the end: {result['environment']['load_average']}.",
        "",
        "| figure | sandbox | paper (one week) | difference (points) | within 5 points |",
        "|---|---:|---:|---:|---|",
    ]
    for row in check["rows"]:
        diff = "-" if row["difference"] is None else f"{100 * row['difference']:+.1f}"
        lines.append(
            f"| {row['figure']} | {pct(row['sandbox'])} | {pct(row['paper'])} | {diff} | "
            f"{'yes' if row['within_5_points'] else '**no**'} |"
        )
    lines += [
        "",
        f"All within 5 points: {'met' if check['met'] else '**missed**'}.",
        "",
        "Acceptance of the action types the paper does not report: "
        + ", ".join(
            f"{t} {pct(a)} ({result['rows_per_action_type'][t]} proposals)"
            for t, a in result["acceptance"].items()
            if t not in PAPER_ACCEPTANCE
        )
        + ".",
        "",
        "## Where the model errors come from",
        "",
        f"{result['model_errors']['count']} model errors ({pct(result['model_errors']['share_of_proposals'])} of the "
        f"proposals; the sandbox's truth calls {pct(result['unacceptable_share_of_proposals'])} of them "
        f"unacceptable, some accepted without noticing). {pct(result['model_errors']['cases_with_one_or_more'])} of "
        f"the cases have one or more; the tenth of the cases with the most hold "
        f"{pct(result['model_errors']['share_in_top_decile_of_cases'])} of them. In "
        f"{pct(result['cases_without_unacceptable_proposal'])} of the cases the truth calls every proposal "
        "acceptable: about the most an autopilot that ran exactly the acceptable steps could finish without a human.",
        "",
        "| case feature | rows with | model-error rate with | rows without | rate without | share of all model errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, f in result["model_errors"]["by_case_feature"].items():
        lines.append(
            f"| {name} | {f['with']['rows']} | {pct(f['with']['model_error_rate'])} | {f['without']['rows']} | "
            f"{pct(f['without']['model_error_rate'])} | {pct(f['share_of_model_errors'])} |"
        )
    lines += ["", "| process/screen | model errors | proposals |", "|---|---:|---:|"]
    lines += [f"| {s['screen']} | {s['model_errors']} | {s['rows']} |" for s in result["model_errors"]["top_screens"]]
    env = result["environment_rejections"]
    lines += [
        "",
        f"Environment rejections: {env['count']}, of which {env['visible']} are visible in the environment (the "
        "case's next state has another etag and a new customer message, the screen having changed under the "
        "proposal, or a tool's error panel, the action having failed).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=POLICY_DIR)
    parser.add_argument("--sessions", type=int, default=COPILOT_SESSIONS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start", type=int, default=2500, help="first copilot case index (after the policy's)")
    parser.add_argument("--scenario", default="default")
    args = parser.parse_args(argv)

    policy = default_policy(args.policy, args.seed)
    # The bare policy: the paper's copilot had no reply guard, so the world is compared with the paper on it.
    records = copilot_feedback(policy, args.sessions, args.seed, args.start, args.scenario, reply_guard=False)
    truth = read_truth(
        copilot_feedback_path(policy, args.sessions, args.seed, args.start, args.scenario, reply_guard=False)
    )
    result = measure(records, truth, args.seed, args.scenario)
    result["comparison"] = compare(result)
    result["paper"] = {"acceptance": PAPER_ACCEPTANCE, "rejection_causes": PAPER_CAUSES}
    result["protocol"] = {
        "policy": str(policy.relative_to(ROOT)) if policy.is_relative_to(ROOT) else str(policy),
        "sessions": args.sessions,
        "seed": args.seed,
        "start": args.start,
        "scenario": args.scenario,
    }
    result["environment"] = environment()
    command = f"python -m bench.sandbox_calibration --sessions {args.sessions}"
    markdown = render(result, command)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
