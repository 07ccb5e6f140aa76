"""Offline evaluation of any ``NextActionPredictor`` on held-out traces (teacher-forced: every step is predicted
from the gold state, whatever was predicted before).

Per step:

* **tool accuracy**: the predicted action type equals the gold one;
* **action accuracy**: ``action_key`` equal (type, target and exact value);
* **value F1**: for gold ``send_text_to_chat`` steps, token F1 of the predicted text against the gold text
  (lowercased word tokens; 0 when the prediction is not a send);
* **step success**: type and target equal and the value equal after normalising case, whitespace and
  punctuation (``normalise_value``);
* **session success** (per trace): every scored step of the trace a step success;
* **ceiling**: where steps carry the sandbox's ``bayes_p`` / ``bayes_type_p``, their mean is the expected accuracy
  of the best possible policy (exact action / action type) on the same steps; where they carry ``bayes_hit`` /
  ``bayes_type_hit``, the share of hits is that policy's accuracy on them. Overall the two agree; on a group of
  steps chosen by their gold action (per gold action type) only the second is that policy's accuracy: a step
  where the best policy says "fill" with 0.8 and the operator toggled counts 0.8 in the first and 0 in the second.

Breakdowns per process and per gold action type, and by whether the step's prefix (the ``type:target`` sequence
of the earlier steps of its trace, per process) occurs in the training traces. Selective accuracy at a coverage
``c``: the action accuracy on the most confident share ``c`` of the steps (ties in confidence count at their
mean accuracy, so the order of the test steps does not matter).

``min_prefix``: steps with fewer earlier steps are not scored. The event-log benchmark
(``docs/data.md``) scores every non-empty prefix (``min_prefix=1``; the end of the case is a target);
the default 0 scores every step.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from policy.predictor import NextActionPredictor
from schemas.actions import (
    Action,
    FillField,
    SelectOption,
    SendTextToChat,
    ToggleCheckbox,
    action_key,
    action_target,
)
from schemas.trace import Trace

BATCH_SIZE = 256
CEILING_NOTE = (
    "Ceiling: the mean of the sandbox's `bayes_p` (`bayes_type_p` for tool accuracy), the expected accuracy of the "
    "best possible policy on the steps that carry it. It bounds overall accuracy. Per gold action type the mean "
    "`bayes_p` is not that policy's accuracy (a step where it predicts another type still counts its `bayes_p`); "
    "`best policy` is: how often the best possible policy's prediction was the step's action (`bayes_hit`). "
    "Neither bounds a type, since a policy that leans toward one type can beat it there and loses more elsewhere."
)
DEFAULT_COVERAGES = (0.25, 0.5, 0.75)
_WORD = re.compile(r"\w+")
T = TypeVar("T")


# --- per-step scores ---------------------------------------------------------------------------------------------


def action_value(action: Action) -> str:
    """The value part of an action ("" for clicks, transfers and closes, whose target is their whole content)."""
    match action:
        case FillField(value=v):
            return v
        case SelectOption(option=o):
            return o
        case ToggleCheckbox(checked=b):
            return "on" if b else "off"
        case SendTextToChat(text=t):
            return t
    return ""


def normalise_value(text: str) -> str:
    """Lowercase, punctuation as spaces, runs of whitespace as one space, stripped."""
    chars = (" " if unicodedata.category(ch).startswith("P") else ch for ch in text.lower())
    return " ".join("".join(chars).split())


def token_f1(predicted: str, gold: str) -> float:
    """F1 of the lowercased word tokens (multiset overlap); 1.0 when both have no tokens."""
    pred_tokens = Counter(_WORD.findall(predicted.lower()))
    gold_tokens = Counter(_WORD.findall(gold.lower()))
    if not pred_tokens and not gold_tokens:
        return 1.0
    overlap = sum((pred_tokens & gold_tokens).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(pred_tokens.values())
    recall = overlap / sum(gold_tokens.values())
    return 2 * precision * recall / (precision + recall)


def step_success(predicted: Action, gold: Action) -> bool:
    """Type and target equal, values equal after ``normalise_value``."""
    return (
        predicted.type == gold.type
        and action_target(predicted) == action_target(gold)
        and normalise_value(action_value(predicted)) == normalise_value(action_value(gold))
    )


@dataclass(frozen=True, slots=True)
class StepScore:
    """One scored step. ``value_f1`` is None unless the gold action is a send; ``prefix_seen`` is None when no
    training traces were given."""

    trace_id: str
    step: int
    process_id: str
    gold_type: str
    tool_ok: bool
    action_ok: bool
    step_ok: bool
    value_f1: float | None
    confidence: float
    bayes_p: float | None
    bayes_type_p: float | None
    prefix_seen: bool | None
    bayes_hit: bool | None = None
    bayes_type_hit: bool | None = None


def _prefix_token(action: Action) -> str:
    return f"{action.type.value}:{action_target(action)}"


class PrefixIndex:
    """Every prefix (per process, as ``type:target`` tokens) of a set of traces, as a trie of interned node ids:
    O(steps) to build and to query, however long the traces."""

    def __init__(self, traces: Iterable[Trace]) -> None:
        self._nodes: dict[tuple[int | str, str], int] = {}
        for trace in traces:
            node: int | str = f"process:{trace.process_id}"
            self._nodes.setdefault((node, ""), len(self._nodes))  # the empty prefix of the process
            for step in trace.steps:
                key = (node, _prefix_token(step.action))
                node = self._nodes.setdefault(key, len(self._nodes))

    def seen(self, trace: Trace) -> list[bool]:
        """For each step of ``trace``: whether the prefix before it occurs in the indexed traces."""
        root = f"process:{trace.process_id}"
        out: list[bool] = []
        node: int | str | None = root if (root, "") in self._nodes else None
        for step in trace.steps:
            out.append(node is not None)
            if node is not None:
                node = self._nodes.get((node, _prefix_token(step.action)))
        return out


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_steps(
    predictor: NextActionPredictor,
    test_traces: Sequence[Trace],
    train_traces: Sequence[Trace] | None = None,
    *,
    min_prefix: int = 0,
    batch_size: int = BATCH_SIZE,
) -> list[StepScore]:
    """Predict every scored step of ``test_traces`` (in batches of ``batch_size`` states) and score it."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index = PrefixIndex(train_traces) if train_traces is not None else None
    cases = []
    for trace in test_traces:
        seen: list[bool | None] = list(index.seen(trace)) if index is not None else [None] * len(trace.steps)
        for step, prefix_seen in zip(trace.steps, seen, strict=True):
            if step.step >= min_prefix:
                cases.append((trace, step, prefix_seen))
    scores: list[StepScore] = []
    for batch in _chunks(cases, batch_size):
        predictions = predictor.predict([step.state for _, step, _ in batch])
        if len(predictions) != len(batch):
            raise ValueError(f"{predictor.name}: {len(predictions)} predictions for {len(batch)} states")
        for (trace, step, prefix_seen), prediction in zip(batch, predictions, strict=True):
            gold, predicted = step.action, prediction.action
            value_f1: float | None = None
            if isinstance(gold, SendTextToChat):
                value_f1 = token_f1(predicted.text, gold.text) if isinstance(predicted, SendTextToChat) else 0.0
            scores.append(
                StepScore(
                    trace_id=trace.trace_id,
                    step=step.step,
                    process_id=trace.process_id,
                    gold_type=gold.type.value,
                    tool_ok=predicted.type == gold.type,
                    action_ok=action_key(predicted) == action_key(gold),
                    step_ok=step_success(predicted, gold),
                    value_f1=value_f1,
                    confidence=prediction.confidence,
                    bayes_p=step.bayes_p,
                    bayes_type_p=step.bayes_type_p,
                    bayes_hit=step.bayes_hit,
                    bayes_type_hit=step.bayes_type_hit,
                    prefix_seen=prefix_seen,
                )
            )
    return scores


# --- summaries ----------------------------------------------------------------------------------------------------


class SliceMetrics(BaseModel):
    """Mean scores over a set of steps. ``value_f1`` is over its ``send_steps`` (None when there are none); the
    ceilings are over the ``ceiling_steps`` that carry the sandbox's probabilities (None when none do), the best
    possible policy's accuracies over the ``bayes_steps`` that record whether it was right."""

    model_config = ConfigDict(frozen=True)

    steps: int
    tool_accuracy: float
    action_accuracy: float
    step_success: float
    send_steps: int
    value_f1: float | None
    ceiling_steps: int
    ceiling_action: float | None
    ceiling_type: float | None
    bayes_steps: int = 0
    bayes_action_accuracy: float | None = None
    bayes_type_accuracy: float | None = None


class SelectivePoint(BaseModel):
    """Action accuracy on the ``steps`` most confident steps (``coverage`` of all); ``threshold`` is the lowest
    confidence among them."""

    model_config = ConfigDict(frozen=True)

    coverage: float
    steps: int
    threshold: float
    action_accuracy: float


class EvalResult(BaseModel):
    """The evaluation of one predictor on one test set; ``model_dump_json()`` writes it."""

    predictor: str
    min_prefix: int
    sessions: int
    session_success: float
    overall: SliceMetrics
    per_process: dict[str, SliceMetrics]
    per_action_type: dict[str, SliceMetrics]
    seen_prefix: SliceMetrics | None = None
    unseen_prefix: SliceMetrics | None = None
    selective: list[SelectivePoint]
    predict_seconds: float = 0.0


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def slice_metrics(scores: Sequence[StepScore]) -> SliceMetrics:
    if not scores:
        raise ValueError("no steps to summarise")
    n = len(scores)
    f1 = [s.value_f1 for s in scores if s.value_f1 is not None]
    ceiling = [(s.bayes_p, s.bayes_type_p) for s in scores if s.bayes_p is not None]
    hits = [(s.bayes_hit, s.bayes_type_hit) for s in scores if s.bayes_hit is not None]
    return SliceMetrics(
        steps=n,
        tool_accuracy=sum(s.tool_ok for s in scores) / n,
        action_accuracy=sum(s.action_ok for s in scores) / n,
        step_success=sum(s.step_ok for s in scores) / n,
        send_steps=len(f1),
        value_f1=_mean(f1),
        ceiling_steps=len(ceiling),
        ceiling_action=_mean([p for p, _ in ceiling if p is not None]),
        ceiling_type=_mean([t for _, t in ceiling if t is not None]),
        bayes_steps=len(hits),
        bayes_action_accuracy=_mean([float(hit) for hit, _ in hits]),
        bayes_type_accuracy=_mean([float(hit) for _, hit in hits if hit is not None]),
    )


def selective_accuracy(scores: Sequence[StepScore], coverage: float) -> SelectivePoint:
    """Action accuracy on the most confident ``coverage`` share of the steps (at least one step). Steps tied in
    confidence at the cut count at their group's mean accuracy, as a random tie-break would in expectation."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    if not scores:
        raise ValueError("no steps to select from")
    k = max(1, round(coverage * len(scores)))
    groups: dict[float, list[bool]] = defaultdict(list)
    for s in scores:
        groups[s.confidence].append(s.action_ok)
    taken, correct, threshold = 0, 0.0, 0.0
    for confidence in sorted(groups, reverse=True):
        group = groups[confidence]
        share = min(len(group), k - taken)
        correct += share * sum(group) / len(group)
        taken += share
        threshold = confidence
        if taken >= k:
            break
    return SelectivePoint(coverage=coverage, steps=k, threshold=threshold, action_accuracy=correct / k)


def summarise(
    name: str,
    scores: Sequence[StepScore],
    *,
    min_prefix: int = 0,
    coverages: Sequence[float] = DEFAULT_COVERAGES,
    predict_seconds: float = 0.0,
) -> EvalResult:
    """The EvalResult of a list of step scores."""
    if not scores:
        raise ValueError("no test steps to evaluate (empty traces, or min_prefix beyond every trace)")
    by_process: dict[str, list[StepScore]] = defaultdict(list)
    by_type: dict[str, list[StepScore]] = defaultdict(list)
    by_trace: dict[str, list[bool]] = defaultdict(list)
    seen: list[StepScore] = []
    unseen: list[StepScore] = []
    for s in scores:
        by_process[s.process_id].append(s)
        by_type[s.gold_type].append(s)
        by_trace[s.trace_id].append(s.step_ok)
        if s.prefix_seen is True:
            seen.append(s)
        elif s.prefix_seen is False:
            unseen.append(s)
    known = any(s.prefix_seen is not None for s in scores)
    return EvalResult(
        predictor=name,
        min_prefix=min_prefix,
        sessions=len(by_trace),
        session_success=sum(all(oks) for oks in by_trace.values()) / len(by_trace),
        overall=slice_metrics(scores),
        per_process={p: slice_metrics(v) for p, v in sorted(by_process.items())},
        per_action_type={t: slice_metrics(v) for t, v in sorted(by_type.items())},
        seen_prefix=slice_metrics(seen) if known and seen else None,
        unseen_prefix=slice_metrics(unseen) if known and unseen else None,
        selective=[selective_accuracy(scores, c) for c in coverages],
        predict_seconds=predict_seconds,
    )


def evaluate_with_scores(
    predictor: NextActionPredictor,
    test_traces: Sequence[Trace],
    train_traces: Sequence[Trace] | None = None,
    *,
    min_prefix: int = 0,
    coverages: Sequence[float] = DEFAULT_COVERAGES,
    batch_size: int = BATCH_SIZE,
) -> tuple[EvalResult, list[StepScore]]:
    """``evaluate``, and the step scores its result summarises (for a breakdown of one's own)."""
    started = time.perf_counter()
    scores = score_steps(predictor, test_traces, train_traces, min_prefix=min_prefix, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    result = summarise(predictor.name, scores, min_prefix=min_prefix, coverages=coverages, predict_seconds=elapsed)
    return result, scores


def evaluate(
    predictor: NextActionPredictor,
    test_traces: Sequence[Trace],
    train_traces: Sequence[Trace] | None = None,
    *,
    min_prefix: int = 0,
    coverages: Sequence[float] = DEFAULT_COVERAGES,
    batch_size: int = BATCH_SIZE,
) -> EvalResult:
    """Evaluate a fitted predictor on ``test_traces``. With ``train_traces``, also split the steps by whether
    their prefix was seen in training."""
    return evaluate_with_scores(
        predictor, test_traces, train_traces, min_prefix=min_prefix, coverages=coverages, batch_size=batch_size
    )[0]


# --- report -------------------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ceiling_source(results: Mapping[str, EvalResult]) -> EvalResult | None:
    return next((r for r in results.values() if r.overall.ceiling_action is not None), None)


def render_table(results: Mapping[str, EvalResult]) -> str:
    """Markdown: an overall table (one row per predictor, plus the sandbox ceiling where the test steps carry it)
    and action accuracy per gold action type and per process, predictors side by side."""
    if not results:
        return ""
    first = next(iter(results.values()))
    coverages = [p.coverage for p in first.selective]
    head = [
        "predictor",
        "steps",
        "tool acc",
        "action acc",
        "step success",
        "session success",
        "value F1",
        *(f"sel. acc @{c:.0%}" for c in coverages),
        "seen-prefix acc",
        "unseen-prefix acc",
    ]
    lines = [_row(head), _row("---" for _ in head)]
    for name, r in results.items():
        selective = {p.coverage: p.action_accuracy for p in r.selective}
        lines.append(
            _row(
                [
                    name,
                    str(r.overall.steps),
                    _fmt(r.overall.tool_accuracy),
                    _fmt(r.overall.action_accuracy),
                    _fmt(r.overall.step_success),
                    _fmt(r.session_success),
                    _fmt(r.overall.value_f1),
                    *(_fmt(selective.get(c)) for c in coverages),
                    _fmt(r.seen_prefix.action_accuracy if r.seen_prefix else None),
                    _fmt(r.unseen_prefix.action_accuracy if r.unseen_prefix else None),
                ]
            )
        )
    ceiling = _ceiling_source(results)
    if ceiling is not None:
        o = ceiling.overall
        seen = ceiling.seen_prefix.ceiling_action if ceiling.seen_prefix else None
        unseen = ceiling.unseen_prefix.ceiling_action if ceiling.unseen_prefix else None
        lines.append(
            _row(
                [
                    "ceiling (sandbox Bayes)",
                    str(o.ceiling_steps),
                    _fmt(o.ceiling_type),
                    _fmt(o.ceiling_action),
                    "–",
                    "–",
                    "–",
                    *("–" for _ in coverages),
                    _fmt(seen),
                    _fmt(unseen),
                ]
            )
        )
    parts = ["\n".join(lines)]
    parts.append(_breakdown(results, "gold action type", lambda r: r.per_action_type, ceiling))
    if len({p for r in results.values() for p in r.per_process}) > 1:
        parts.append(_breakdown(results, "process", lambda r: r.per_process, ceiling))
    if ceiling is not None:
        parts.append(CEILING_NOTE)
    return "\n\n".join(parts) + "\n"


def _breakdown(
    results: Mapping[str, EvalResult],
    what: str,
    get: Callable[[EvalResult], dict[str, SliceMetrics]],
    ceiling: EvalResult | None,
) -> str:
    keys = sorted({k for r in results.values() for k in get(r)})
    first = next(iter(results.values()))
    head = [what, "steps", *(f"{name} action acc" for name in results)]
    best_policy = ceiling is not None and ceiling.overall.bayes_action_accuracy is not None
    if ceiling is not None:
        head.append("ceiling")
    if best_policy:
        head.append("best policy")
    lines = [_row(head), _row("---" for _ in head)]
    for key in [*keys, "all"]:
        if key == "all":
            cells = [f"**{key}**", str(first.overall.steps)]
            cells += [_fmt(r.overall.action_accuracy) for r in results.values()]
            if ceiling is not None:
                cells.append(_fmt(ceiling.overall.ceiling_action))
            if ceiling is not None and best_policy:
                cells.append(_fmt(ceiling.overall.bayes_action_accuracy))
        else:
            base = get(first).get(key)
            cells = [key, str(base.steps) if base else "–"]
            for r in results.values():
                m = get(r).get(key)
                cells.append(_fmt(m.action_accuracy if m else None))
            if ceiling is not None:
                m = get(ceiling).get(key)
                cells.append(_fmt(m.ceiling_action if m else None))
                if best_policy:
                    cells.append(_fmt(m.bayes_action_accuracy if m else None))
        lines.append(_row(cells))
    return "\n".join(lines)
