"""A log extracted while cases were running: which held-out cases the combined policy should choose on.

Protocol (decision 0026): BPI 2012 W's ``train_val`` split (cases started before 3 February 2012, recorded until
10 March) is cut at a date, as if the log had been extracted then: the cases started before the cut keep their
events before it (the latest ones were still running and end at their last recorded event); the cases started
after it are scored (they are complete in ``train_val``). The combined policy without the LM (its counting and
gradient-boosting members, blend, routing and calibration: the held-out choice is what is compared) is fitted
on the cut log twice: holding out the latest cases (the rule before) and the latest cases the log saw through
(``policy.combined.time_split``). Reported per cut: the held-out accuracy the choice saw, and on the later cases
the accuracy (every prefix, end of case counted) and the calibration error of the proposals' confidence.

    .venv/bin/python -m bench.policy_cut_log [--cuts 2011-12-15 2012-01-10]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bench.common import environment, shared_data_dir, write_results
from importers.eventlog import RawCase, activity_screen, case_traces
from importers.xes import read_cases
from policy.calibration import expected_calibration_error
from policy.combined import MIN_SEEN_THROUGH, CombinedPolicy
from policy.evaluate import evaluate
from schemas.actions import action_key
from schemas.trace import Trace, TraceSource

LOG = "train_val_BPI_Challenge_2012_W_Complete.xes.gz"
CUTS = ("2011-12-15", "2012-01-10")


def cut_log(cut: datetime) -> tuple[list[Trace], list[Trace]]:
    """(the cases started before ``cut`` with their events before it, the cases started after it)."""
    cases = list(read_cases(shared_data_dir() / "eventlogs" / LOG))
    activities = {event.activity for case in cases for event in case.events}
    screen = activity_screen("bpi_challenge_2012_w_complete", activities)  # every activity, also those after the cut
    before: list[RawCase] = []
    after: list[RawCase] = []
    for case in cases:
        events = sorted(case.events, key=lambda event: event.timestamp)
        if events and events[0].timestamp < cut:
            case.events = [event for event in events if event.timestamp < cut]
            before.append(case)
        else:
            after.append(case)

    def traces(cases: list[RawCase]) -> list[Trace]:
        return list(case_traces(cases, screen=screen, source=TraceSource.XES, source_file=LOG))

    return traces(before), traces(after)


def score(policy: CombinedPolicy, train: list[Trace], later: list[Trace]) -> dict[str, Any]:
    states = [step.state for trace in later for step in trace.steps]
    gold = [action_key(step.action) for trace in later for step in trace.steps]
    predictions = policy.predict(states)
    confidence = [p.confidence for p in predictions]
    right = [p.action is not None and action_key(p.action) == g for p, g in zip(predictions, gold, strict=True)]
    return {
        "running_cases_fitted_only": policy.report_["possibly_running_cases"],
        "held_out_cases": policy.report_["validation_cases"],
        "held_out_accuracy": policy.report_["validation"]["combined_accuracy"],
        "later_accuracy": round(evaluate(policy, later, train, min_prefix=1).overall.action_accuracy, 4),
        "later_mean_confidence": round(float(np.mean(confidence)), 4),
        "later_right": round(float(np.mean(right)), 4),
        "later_calibration_error": round(expected_calibration_error(confidence, right), 4),
    }


def run(cuts: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for text in cuts:
        cut = datetime.fromisoformat(text).replace(tzinfo=UTC)
        train, later = cut_log(cut)
        print(f"cut {text}: {len(train):,} cases before, {len(later):,} after", flush=True)
        rows: dict[str, Any] = {"cases_before": len(train), "cases_after": len(later)}
        # the rule before holds out the latest cases, seen through or not: no share of cases is enough for it
        for rule, min_seen_through in (("latest", float("inf")), ("latest_seen_through", MIN_SEEN_THROUGH)):
            tick = time.perf_counter()
            policy = CombinedPolicy(lm=False, min_seen_through=min_seen_through).fit(train)
            rows[rule] = score(policy, train, later) | {"fit_s": round(time.perf_counter() - tick, 1)}
            print(f"  {rule}: {rows[rule]}", flush=True)
        results[text] = rows
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "log": LOG,
        "cuts": results,
        "calibration_error": {
            f"{rule}.{cut}": rows[rule]["later_calibration_error"]
            for cut, rows in results.items()
            for rule in ("latest", "latest_seen_through")
        },
        "environment": environment(),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# A cut log: the held-out cases the combined policy chooses on",
        "",
        f"{result['log']} cut at each date (the cases started before it, their events before it); the combined "
        f"policy without the LM fitted on the cut log, scored on the cases started after the cut. Measured "
        f"{result['date']}.",
        "",
        "| cut | held out | cases only fitted (possibly running) | held-out accuracy | later: accuracy | "
        "later: mean confidence vs right | later: calibration error |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    names = {"latest": "the latest cases (before)", "latest_seen_through": "the latest seen through (now)"}
    for cut, rows in result["cuts"].items():
        for rule, name in names.items():
            r = rows[rule]
            lines.append(
                f"| {cut} | {name} | {r['running_cases_fitted_only']:,} | {r['held_out_accuracy']:.4f} | "
                f"{r['later_accuracy']:.4f} | {r['later_mean_confidence']:.3f} vs {r['later_right']:.3f} | "
                f"{r['later_calibration_error']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", nargs="+", default=list(CUTS), help="dates (ISO) to cut the log at")
    args = parser.parse_args()
    result = run(args.cuts)
    json_path, md_path = write_results("policy_cut_log", result, render(result))
    print(render(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
