"""Which predictor answers where: a tree of state groups (all -> process -> screen -> prefix length), each group
answered by the predictor that validation showed to be better there, with a fallback to the parent's choice.

Choosing per group on held-out steps is a multiple comparison, and with few steps a lucky predictor would win
groups it is not better in. So a group keeps its parent's choice unless another predictor beats it *clearly* on
the group's own held-out steps: paired on the same steps, the difference in hits must exceed ``z`` standard
errors of a McNemar-style sign test (``z * sqrt(discordant steps)``), and the group needs ``min_steps`` steps to
be considered at all. The root's parent choice is the ``default`` predictor (the simplest one, the n-gram): with
a handful of held-out steps nothing can beat it clearly, which is what a new process with five cases needs.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.state import UIState

ROOT = "all"
LENGTH_EDGES = (0, 1, 2, 3, 5, 8, 13, 21)
"""Lower edges of the prefix-length buckets: 0, 1, 2, 3-4, 5-7, 8-12, 13-20, 21+."""


def length_bucket(step: int) -> str:
    """The bucket label of a prefix length (``state.step``)."""
    for low, high in itertools.pairwise(LENGTH_EDGES):
        if step < high:
            return str(low) if high == low + 1 else f"{low}-{high - 1}"
    return f"{LENGTH_EDGES[-1]}+"


def group_path(state: UIState) -> tuple[str, ...]:
    """The groups a state belongs to, from the root down: all, process, screen, prefix-length bucket."""
    process = state.process_id
    screen = f"{process}/{state.screen.screen_id}"
    return (ROOT, process, screen, f"{screen}/len {length_bucket(state.step)}")


@dataclass
class Routing:
    """The chosen predictor per group (groups without enough held-out steps inherit their parent's) and the
    held-out figures behind each choice: steps, accuracy of every predictor, the choice."""

    default: str
    choices: dict[str, str] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def route(self, path: Sequence[str]) -> str:
        """The choice of the deepest group of ``path`` that has one."""
        chosen = self.default
        for group in path:
            chosen = self.choices.get(group, chosen)
        return chosen

    def routes_used(self) -> set[str]:
        return {self.default, *self.choices.values()}

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default, "choices": self.choices, "figures": self.figures}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Routing:
        return cls(default=data["default"], choices=dict(data["choices"]), figures=dict(data.get("figures", {})))


def clearly_better(challenger: np.ndarray, incumbent: np.ndarray, z: float) -> float:
    """How many more of the same steps ``challenger`` gets right than ``incumbent``, when that exceeds ``z``
    standard errors of the paired difference; 0 otherwise."""
    gain = int(challenger.sum()) - int(incumbent.sum())
    discordant = int((challenger != incumbent).sum())
    return float(gain) if gain > 0 and gain > z * math.sqrt(discordant) else 0.0


def choose_routes(
    paths: Sequence[Sequence[str]],
    correct: Mapping[str, np.ndarray],
    default: str,
    *,
    z: float = 1.64,
    min_steps: int = 30,
) -> Routing:
    """Choose a predictor per group from held-out steps: ``paths[i]`` are the groups of step ``i`` (root first,
    as ``group_path``), ``correct[name][i]`` whether predictor ``name`` got step ``i`` right. Predictors are
    preferred in ``correct``'s order on equal gains (list the simpler first)."""
    if default not in correct:
        raise ValueError(f"default {default!r} is not among the predictors {list(correct)}")
    names = list(correct)
    members: dict[str, list[int]] = defaultdict(list)
    children: dict[str, list[str]] = defaultdict(list)
    for i, path in enumerate(paths):
        for depth, group in enumerate(path):
            if not members[group] and depth > 0:
                children[path[depth - 1]].append(group)
            members[group].append(i)
    routing = Routing(default=default)

    def visit(group: str, inherited: str, parent_steps: int) -> None:
        rows = np.asarray(members[group], dtype=np.int64)
        chosen = inherited
        if len(rows) >= min_steps:
            hits = {name: correct[name][rows] for name in names}
            gains = {name: clearly_better(hits[name], hits[inherited], z) for name in names if name != inherited}
            best = max(gains.values(), default=0.0)
            if best > 0:
                chosen = next(name for name in names if gains.get(name) == best)
            routing.choices[group] = chosen
            routing.figures[group] = {
                "steps": len(rows),
                "accuracy": {name: round(float(h.mean()), 4) for name, h in hits.items()},
                "chosen": chosen,
                "inherited": inherited,
                "same_as_parent": len(rows) == parent_steps,  # a single process, screen: nothing new
            }
        for child in children[group]:
            visit(child, chosen, len(rows))

    if paths:
        visit(paths[0][0], default, -1)
    return routing
