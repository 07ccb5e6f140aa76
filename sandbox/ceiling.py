"""The sandbox's own ceiling: the accuracy the best possible policy could reach, per action type and process.

Each sandbox TraceStep carries ``bayes_p`` (the probability that the Bayes-optimal policy, seeing only the
UIState, predicts the exact action) and ``bayes_type_p`` (the same for the action type). Their means over steps
are the expected accuracies of that policy: the ceiling a learned policy's step accuracy is read against. Grouped
by the step's own action type they are not that policy's accuracy on the group (a step where it predicts a fill
with 0.8 and the operator ticked a box counts 0.8 among the ticks, where the policy was wrong); the share of
``bayes_hit`` is, and ``best_policy`` reports it where the traces record it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from schemas import Trace


@dataclass(frozen=True)
class CeilingRow:
    group: str
    steps: int
    action: float  # exact action (type + target + value)
    action_type: float
    best_policy: float | None = None  # the best possible policy's accuracy (share of bayes_hit); None: not recorded


CeilingSample = tuple[str, float, float, bool | None]  # (group, bayes_p, bayes_type_p, bayes_hit) of one step


def ceiling_samples(traces: Iterable[Trace], by: str = "action_type") -> Iterator[CeilingSample]:
    """One sample per step that carries a ceiling, grouped by the true step's action type
    (``by="action_type"``) or by process (``"process"``)."""
    for trace in traces:
        for step in trace.steps:
            if step.bayes_p is None or step.bayes_type_p is None:
                continue
            key = step.action.type.value if by == "action_type" else trace.process_id
            yield key, step.bayes_p, step.bayes_type_p, step.bayes_hit


def summarise(samples: Iterable[CeilingSample]) -> list[CeilingRow]:
    """Mean ceilings per group; the last row is over all samples."""
    groups: dict[str, list[tuple[float, float, bool | None]]] = defaultdict(list)
    for key, p, type_p, hit in samples:
        groups[key].append((p, type_p, hit))
        groups["all"].append((p, type_p, hit))
    rows = []
    for key in sorted(k for k in groups if k != "all") + (["all"] if "all" in groups else []):
        values = groups[key]
        hits = [v[2] for v in values if v[2] is not None]
        rows.append(
            CeilingRow(
                group=key,
                steps=len(values),
                action=sum(v[0] for v in values) / len(values),
                action_type=sum(v[1] for v in values) / len(values),
                best_policy=sum(hits) / len(hits) if hits else None,
            )
        )
    return rows


def ceiling_table(traces: Iterable[Trace], by: str = "action_type") -> list[CeilingRow]:
    """Mean ceilings of ``traces`` grouped by action type or process; the last row is over all steps."""
    return summarise(ceiling_samples(traces, by))


def render_ceiling(rows: list[CeilingRow]) -> str:
    if not any(r.best_policy is not None for r in rows):
        lines = ["| group | steps | ceiling: exact action | ceiling: action type |", "|---|---:|---:|---:|"]
        lines += [f"| {r.group} | {r.steps} | {r.action:.3f} | {r.action_type:.3f} |" for r in rows]
        return "\n".join(lines)
    lines = [
        "| group | steps | ceiling: exact action | ceiling: action type | best policy's accuracy (exact action) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        best = "–" if r.best_policy is None else f"{r.best_policy:.3f}"
        lines.append(f"| {r.group} | {r.steps} | {r.action:.3f} | {r.action_type:.3f} | {best} |")
    return "\n".join(lines)
