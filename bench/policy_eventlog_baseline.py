"""Next-activity prediction on the real event logs with the gradient-boosting baseline (issue 3).

Run from the repository root::

    .venv/bin/python -m bench.policy_eventlog_baseline                 # both logs, writes bench/results/...json
    .venv/bin/python -m bench.policy_eventlog_baseline --logs bpi2013 --importance --results /tmp/bench

Protocol (../shared/data/README.md): fit on ``train_val_<log>.xes.gz``, evaluate on ``test_<log>.xes.gz``; micro
accuracy over every test prefix of length >= 1 (step 0, the state before the first event, is left out, as in the
reference numbers), end of case counted as a target (the importer's final ``CloseChat("case_end")`` step).
Reported beside it: accuracy on prefixes seen / unseen in training (a prefix is the sequence of ``type:target``
of the earlier steps of the case), selective accuracy on the most confident half of the prefixes, and the fit and
predict times.

The functions are meant to be reused by a larger bench: ``load_log``, ``test_rows``, ``training_prefixes``,
``evaluate``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sklearn

from importers.xes import import_xes
from policy.gbm_baseline import GradientBoostingBaseline
from policy.predictor import NextActionPredictor
from schemas.actions import Action, action_key, action_target
from schemas.state import UIState
from schemas.trace import Trace

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "eventlogs"
RESULTS = ROOT / "bench" / "results"

LOGS = {"bpi2013": "bpi_challenge_2013_incidents", "bpi2012w": "BPI_Challenge_2012_W_Complete"}
"""Short name -> the log's file stem (``train_val_<stem>.xes.gz`` / ``test_<stem>.xes.gz``)."""

REFERENCE = {
    "bpi2013": {"test_prefixes": 8735, "bigram": 0.5390, "longest_suffix": 0.5578, "activity_ceiling": 0.8008},
    "bpi2012w": {"test_prefixes": 13236, "bigram": 0.6576, "longest_suffix": 0.6610, "activity_ceiling": 0.7233},
}
"""Activity-only reference numbers of ../shared/data/README.md (test split, every prefix, end of case included)."""

COVERAGE = 0.5


def load_log(name: str, data_dir: Path = DATA) -> tuple[list[Trace], list[Trace]]:
    """(train_val traces, test traces) of a log, by short name (``bpi2013``) or file stem. Both splits get the
    same screen (the activities of both files), so control ids agree."""
    stem = LOGS.get(name, name)
    train_path = data_dir / f"train_val_{stem}.xes.gz"
    test_path = data_dir / f"test_{stem}.xes.gz"
    for path in (train_path, test_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing (the shared data folder sits beside the repository)")
    train = list(import_xes(train_path, vocabulary_from=[test_path]).traces)
    test = list(import_xes(test_path, vocabulary_from=[train_path]).traces)
    return train, test


def step_token(action: Action) -> str:
    """The identity of a past step in a prefix: action type and target (no value)."""
    return f"{action.type}:{action_target(action)}"


@dataclass(frozen=True, slots=True)
class Row:
    """One evaluated prefix: the state after it, the true next action, and the prefix itself."""

    prefix: tuple[str, ...]
    state: UIState
    action: Action


def test_rows(traces: Sequence[Trace], *, min_prefix: int = 1) -> list[Row]:
    """Every prefix of length >= ``min_prefix`` of every trace, with the action that follows it."""
    rows: list[Row] = []
    for trace in traces:
        tokens = [step_token(step.action) for step in trace.steps]
        for i, step in enumerate(trace.steps):
            if i >= min_prefix:
                rows.append(Row(prefix=tuple(tokens[:i]), state=step.state, action=step.action))
    return rows


def training_prefixes(traces: Sequence[Trace]) -> set[tuple[str, ...]]:
    """Every prefix (of any length, the empty one included) that some training step was made after."""
    seen: set[tuple[str, ...]] = set()
    for trace in traces:
        tokens = [step_token(step.action) for step in trace.steps]
        seen.update(tuple(tokens[:i]) for i in range(len(tokens)))
    return seen


def _accuracy(hits: Sequence[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def selective_accuracy(hits: Sequence[bool], confidences: Sequence[float], coverage: float = COVERAGE) -> float | None:
    """Accuracy on the ``coverage`` share of rows with the highest confidence (ties kept in row order)."""
    if not hits:
        return None
    n = max(1, math.ceil(coverage * len(hits)))
    order = sorted(range(len(hits)), key=lambda i: -confidences[i])[:n]
    return sum(hits[i] for i in order) / n


def evaluate(predictor: NextActionPredictor, train: Sequence[Trace], test: Sequence[Trace]) -> dict[str, Any]:
    """Fit on ``train``, predict every test prefix; accuracies (overall, seen / unseen prefix, selective at
    ``COVERAGE``), counts and times."""
    started = time.perf_counter()
    predictor.fit(train)
    fit_s = time.perf_counter() - started
    rows = test_rows(test)
    started = time.perf_counter()
    predictions = predictor.predict([row.state for row in rows])
    predict_s = time.perf_counter() - started
    hits = [action_key(p.action) == action_key(row.action) for p, row in zip(predictions, rows, strict=True)]
    confidences = [p.confidence for p in predictions]
    seen_prefixes = training_prefixes(train)
    seen = [row.prefix in seen_prefixes for row in rows]
    seen_hits = [hit for hit, s in zip(hits, seen, strict=True) if s]
    unseen_hits = [hit for hit, s in zip(hits, seen, strict=True) if not s]
    return {
        "predictor": predictor.name,
        "train_traces": len(train),
        "train_steps": sum(len(t.steps) for t in train),
        "test_traces": len(test),
        "test_prefixes": len(rows),
        "accuracy": _accuracy(hits),
        "seen_prefixes": len(seen_hits),
        "accuracy_seen": _accuracy(seen_hits),
        "unseen_prefixes": len(unseen_hits),
        "accuracy_unseen": _accuracy(unseen_hits),
        f"selective_accuracy_{int(COVERAGE * 100)}": selective_accuracy(hits, confidences),
        "fit_s": fit_s,
        "predict_s": predict_s,
        "predict_ms_per_prefix": 1000 * predict_s / len(rows) if rows else None,
    }


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table(results: dict[str, dict[str, Any]]) -> str:
    """A small text table of the results, one line per log, floors beside."""
    header = (
        "log",
        "prefixes",
        "acc",
        "seen",
        "unseen (n)",
        "sel@50",
        "bigram",
        "suffix",
        "ceiling",
        "fit s",
        "pred s",
    )
    lines = [header]
    for log, r in results.items():
        ref = REFERENCE.get(log, {})
        lines.append(
            (
                log,
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
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--logs", nargs="+", default=list(LOGS), help=f"short names or file stems ({', '.join(LOGS)})")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the event logs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder the JSON is written to ('' = none)")
    parser.add_argument("--max-samples", type=int, default=None, help="cap the training rows (seeded subset)")
    parser.add_argument("--n-threads", type=int, default=1, help="OpenMP threads of the GBM (0 = all cores)")
    parser.add_argument("--importance", action="store_true", help="permutation importance of feature groups")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    params: dict[str, object] = {}
    for log in args.logs:
        started = time.perf_counter()
        train, test = load_log(log, args.data)
        load_s = time.perf_counter() - started
        model = GradientBoostingBaseline(max_samples=args.max_samples, n_threads=args.n_threads or None)
        params = model.get_params()
        result = evaluate(model, train, test)
        result["load_s"] = load_s
        result["n_iter"] = model.n_iter_
        result["features"] = list(model.features_.names)
        result["reference"] = REFERENCE.get(log)
        if args.importance:
            rows = test_rows(test)
            result["importance"] = model.feature_importance([r.state for r in rows], [r.action for r in rows])
        results[log] = result
        print(f"{log}: {result['accuracy']:.4f} on {result['test_prefixes']} prefixes", file=sys.stderr)

    print("next-activity accuracy on the test split, every prefix of length >= 1, end of case included")
    print(table(results))
    for log, r in results.items():
        if "importance" in r:
            top = ", ".join(f"{k} {v:+.4f}" for k, v in list(r["importance"].items())[:8])
            print(f"{log} importance (accuracy drop when shuffled): {top}")

    if str(args.results):
        args.results.mkdir(parents=True, exist_ok=True)
        out = args.results / "policy_eventlog_baseline.json"
        payload = {
            "benchmark": "policy_eventlog_baseline",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "protocol": "fit on train_val, micro accuracy over every test prefix of length >= 1, end of case "
            "included; seen = prefix (type:target of earlier steps) occurs in training; selective at 50% coverage "
            "= accuracy on the most confident half",
            "config": {"logs": args.logs, "params": params},
            "environment": {
                "python": platform.python_version(),
                "sklearn": sklearn.__version__,
                "cpus": os.cpu_count(),
                "load_average_start": load_before,
                "load_average_end": os.getloadavg(),
                "machine": platform.machine(),
            },
            "results": results,
        }
        out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
