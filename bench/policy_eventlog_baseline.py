"""Next-activity prediction on the real event logs with the gradient-boosting baseline (issue 3).

Run from the repository root::

    .venv/bin/python -m bench.policy_eventlog_baseline                 # both logs, writes bench/results/...json
    .venv/bin/python -m bench.policy_eventlog_baseline --logs bpi2013 --importance --results /tmp/bench

Protocol (docs/data.md): fit on ``train_val_<log>.xes.gz``, evaluate on ``test_<log>.xes.gz``; micro
accuracy over every test prefix of length >= 1 (step 0, the state before the first event, is left out, as in the
reference numbers), end of case counted as a target (the importer's final ``CloseChat("case_end")`` step).
Reported beside it: accuracy on prefixes seen / unseen in training (a prefix is the sequence of ``type:target``
of the earlier steps of the case), selective accuracy on the most confident half of the prefixes, and the fit and
predict times.

Feature selection on validation: which timing fields to use (all, all but the clock time ``hour`` / ``weekday``,
none of ``elapsed_s`` / ``since_last_s`` / ``hour`` / ``weekday``) is chosen by fitting on ``train_`` and scoring
on ``val_`` (never on test); the chosen model is then fitted on ``train_val_`` and tested. When the choice is not
"all", the model with every field is tested too and reported beside it. ``--no-select`` skips the selection.

The functions are meant to be reused by a larger bench: ``load_log``, ``load_validation``, ``test_rows``,
``training_prefixes``, ``evaluate``, ``select_on_validation``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, environment, shared_data_dir, write_results
from importers.xes import import_xes
from policy.baselines.gbm import GradientBoostingBaseline
from policy.evaluate import evaluate as evaluate_predictor
from policy.predictor import NextActionPredictor
from schemas.trace import Trace, TraceStep

DATA = shared_data_dir() / "eventlogs"
NAME = "policy_eventlog_baseline"

LOGS = {"bpi2013": "bpi_challenge_2013_incidents", "bpi2012w": "BPI_Challenge_2012_W_Complete"}
"""Short name -> the log's file stem (``train_val_<stem>.xes.gz`` / ``test_<stem>.xes.gz``)."""

REFERENCE = {
    "bpi2013": {"test_prefixes": 8735, "bigram": 0.5390, "longest_suffix": 0.5578, "activity_ceiling": 0.8008},
    "bpi2012w": {"test_prefixes": 13236, "bigram": 0.6576, "longest_suffix": 0.6610, "activity_ceiling": 0.7233},
}
"""Activity-only reference numbers of docs/data.md (test split, every prefix, end of case included)."""

COVERAGE = 0.5

EXCLUSIONS: dict[str, tuple[str, ...]] = {
    "all fields": (),
    "no clock": ("hour", "weekday"),
    "no timing": ("elapsed_s", "since_last_s", "hour", "weekday"),
}
"""The candidate ``exclude_fields`` of the validation selection, in order of preference on a tie."""


def load_split(name: str, split: str, data_dir: Path = DATA, activity_with: Sequence[str] = ()) -> list[Trace]:
    """The traces of one split (``train_val``, ``test``, ``train``, ``val``) of a log, by short name (``bpi2013``)
    or file stem. Every split gets the same screen (the activities of train_val and test, which cover all
    cases), so control ids agree across splits. ``activity_with``: event attributes joined to the activity, as
    ``autopilot import xes --activity-with``."""
    stem = LOGS.get(name, name)
    path = data_dir / f"{split}_{stem}.xes.gz"
    vocabulary = [data_dir / f"{other}_{stem}.xes.gz" for other in ("train_val", "test") if other != split]
    for needed in (path, *vocabulary):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} is missing (the shared data folder sits beside the repository)")
    return list(import_xes(path, vocabulary_from=vocabulary, activity_with=activity_with).traces)


def load_log(name: str, data_dir: Path = DATA, activity_with: Sequence[str] = ()) -> tuple[list[Trace], list[Trace]]:
    """(train_val traces, test traces) of a log: what the reported model is fitted and tested on."""
    return load_split(name, "train_val", data_dir, activity_with), load_split(name, "test", data_dir, activity_with)


def load_validation(name: str, data_dir: Path = DATA) -> tuple[list[Trace], list[Trace]]:
    """(train traces, val traces) of a log: for choices made before testing."""
    return load_split(name, "train", data_dir), load_split(name, "val", data_dir)


def test_rows(traces: Sequence[Trace], *, min_prefix: int = 1) -> list[TraceStep]:
    """Every step after a prefix of length >= ``min_prefix``: the rows the permutation importance shuffles."""
    return [step for trace in traces for step in trace.steps if step.step >= min_prefix]


def evaluate(predictor: NextActionPredictor, train: Sequence[Trace], test: Sequence[Trace]) -> dict[str, Any]:
    """Fit on ``train``, score every test prefix with ``policy.evaluate`` (the shared protocol); the accuracies
    (overall, seen / unseen prefix, selective at ``COVERAGE``), counts and times."""
    started = time.perf_counter()
    predictor.fit(train)
    fit_s = time.perf_counter() - started
    r = evaluate_predictor(predictor, test, train, min_prefix=1, coverages=(COVERAGE,))
    seen, unseen = r.seen_prefix, r.unseen_prefix
    return {
        "predictor": predictor.name,
        "train_traces": len(train),
        "train_steps": sum(len(t.steps) for t in train),
        "test_traces": len(test),
        "test_prefixes": r.overall.steps,
        "accuracy": r.overall.action_accuracy,
        "seen_prefixes": seen.steps if seen else 0,
        "accuracy_seen": seen.action_accuracy if seen else None,
        "unseen_prefixes": unseen.steps if unseen else 0,
        "accuracy_unseen": unseen.action_accuracy if unseen else None,
        f"selective_accuracy_{int(COVERAGE * 100)}": r.selective[0].action_accuracy,
        "fit_s": fit_s,
        "predict_s": r.predict_seconds,
        "predict_ms_per_prefix": 1000 * r.predict_seconds / r.overall.steps,
    }


def prefix_accuracy(predictor: NextActionPredictor, traces: Sequence[Trace]) -> float:
    """Micro accuracy of a fitted predictor over every prefix of length >= 1 of the traces."""
    return evaluate_predictor(predictor, traces, min_prefix=1).overall.action_accuracy


def select_on_validation(
    train: Sequence[Trace],
    val: Sequence[Trace],
    make: Callable[[tuple[str, ...]], NextActionPredictor],
    candidates: dict[str, tuple[str, ...]] = EXCLUSIONS,
) -> tuple[str, dict[str, float]]:
    """Fit ``make(exclude_fields)`` on ``train`` for each candidate, score it on ``val``; return the best label
    (the first of equals) and every score."""
    scores = {label: prefix_accuracy(make(exclude).fit(train), val) for label, exclude in candidates.items()}
    best = max(scores.values())
    return next(label for label, score in scores.items() if score == best), scores


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _row(label: str, log: str, r: dict[str, Any]) -> tuple[str, ...]:
    ref = REFERENCE.get(log, {})
    return (
        label,
        _fmt(r["test_prefixes"]),
        _fmt(r["accuracy"]),
        _fmt(r["accuracy_seen"]),
        f"{_fmt(r['accuracy_unseen'])} ({r['unseen_prefixes']})",
        _fmt(r[f"selective_accuracy_{int(COVERAGE * 100)}"]),
        _fmt(ref.get("bigram")),
        _fmt(ref.get("longest_suffix")),
        _fmt(ref.get("activity_ceiling")),
        f"{r['fit_s']:.1f}",
        f"{r['predict_s']:.1f}",
    )


def table(results: dict[str, dict[str, Any]]) -> str:
    """A small text table: per log the selected model (and the all-fields one when another was selected), the
    activity-only floors and ceiling beside."""
    header = ("log [fields]", "prefixes", "acc", "seen", "unseen (n)", "sel@50", "bigram", "suffix", "ceiling")
    lines: list[tuple[str, ...]] = [(*header, "fit s", "pred s")]
    for log, r in results.items():
        lines.append(_row(f"{log} [{r.get('fields', 'all fields')}]", log, r))
        if r.get("all_fields"):
            lines.append(_row(f"{log} [all fields]", log, r["all_fields"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def _run(
    model: GradientBoostingBaseline, train: Sequence[Trace], test: Sequence[Trace], importance: bool
) -> dict[str, Any]:
    result = evaluate(model, train, test)
    result["n_iter"] = model.n_iter_
    result["features"] = model.feature_names_
    if importance:
        rows = test_rows(test)
        result["importance"] = model.feature_importance([r.state for r in rows], [r.action for r in rows])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--logs", nargs="+", default=list(LOGS), help=f"short names or file stems ({', '.join(LOGS)})")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the event logs")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder the JSON is written to ('' = none)")
    parser.add_argument("--max-samples", type=int, default=None, help="cap the training rows (seeded subset)")
    parser.add_argument("--n-threads", type=int, default=1, help="OpenMP threads of the GBM (0 = all cores)")
    parser.add_argument("--no-select", action="store_true", help="use every field, skip the selection on val")
    parser.add_argument("--importance", action="store_true", help="permutation importance of feature groups")
    args = parser.parse_args(argv)

    def make(exclude: tuple[str, ...] = ()) -> GradientBoostingBaseline:
        return GradientBoostingBaseline(
            exclude_fields=exclude, max_samples=args.max_samples, n_threads=args.n_threads or None
        )

    started_all = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for log in args.logs:
        chosen, scores, select_s = "all fields", None, None
        if not args.no_select:
            started = time.perf_counter()
            train, val = load_validation(log, args.data)
            chosen, scores = select_on_validation(train, val, make)
            select_s = time.perf_counter() - started
            del train, val
            print(f"{log}: validation {scores} -> {chosen}", file=sys.stderr)
        started = time.perf_counter()
        train, test = load_log(log, args.data)
        load_s = time.perf_counter() - started
        result = _run(make(EXCLUSIONS[chosen]), train, test, args.importance)
        result |= {
            "fields": chosen,
            "exclude_fields": list(EXCLUSIONS[chosen]),
            "selection": {"validation_accuracy": scores, "chosen": chosen, "seconds": select_s},
            "load_s": load_s,
            "reference": REFERENCE.get(log),
            "all_fields": None if chosen == "all fields" else _run(make(), train, test, args.importance),
        }
        results[log] = result
        print(f"{log}: {result['accuracy']:.4f} on {result['test_prefixes']} prefixes ({chosen})", file=sys.stderr)

    print("next-activity accuracy on the test split, every prefix of length >= 1, end of case included")
    print(table(results))
    for log, r in results.items():
        if "importance" in r:
            top = ", ".join(f"{k} {v:+.4f}" for k, v in list(r["importance"].items())[:8])
            print(f"{log} importance (accuracy drop when shuffled): {top}")

    if str(args.results):
        payload = {
            "benchmark": NAME,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "protocol": "fit on train_val, micro accuracy over every test prefix of length >= 1, end of case "
            "included; seen = prefix (type:target of earlier steps) occurs in training; selective at 50% coverage "
            "= accuracy on the most confident half; timing fields chosen on train -> val",
            "config": {"logs": args.logs, "params": make().get_params(), "candidates": EXCLUSIONS},
            "total_s": time.perf_counter() - started_all,
            "environment": environment(),
            "results": results,
        }
        markdown = (
            "# Gradient-boosting baseline on the real event logs\n\nNext-activity accuracy on the test split, "
            "every prefix of length >= 1, end of case included (fields chosen on train -> val).\n\n```\n"
            f"{table(results)}\n```\n"
        )
        for path in write_results(NAME, payload, markdown, args.results):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
