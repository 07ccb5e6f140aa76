"""``autopilot policy evaluate``: a saved policy beside the two floors (fitted on the training traces) and, on
sandbox traces, the ceiling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy.baselines.floors import MostFrequentPerScreen, SuffixNGram
from policy.evaluate import EvalResult, evaluate, render_table
from policy.policy import LMPolicy
from policy.predictor import NextActionPredictor
from schemas.trace import Trace


@dataclass(frozen=True)
class Report:
    results: dict[str, EvalResult]
    markdown: str

    @property
    def data(self) -> dict[str, Any]:
        return {name: result.model_dump(mode="json") for name, result in self.results.items()}


def compare_with_floors(
    predictor: NextActionPredictor, test: Sequence[Trace], train: Sequence[Trace] | None = None, name: str = "lm policy"
) -> Report:
    """Evaluate a fitted predictor on ``test`` under ``name``; with ``train``, also the two floors fitted on it and
    the split of the test steps by whether their prefix occurs in training."""
    results: dict[str, EvalResult] = {}
    if train:
        for floor in (MostFrequentPerScreen().fit(train), SuffixNGram().fit(train)):
            results[floor.name] = evaluate(floor, test, train)
    results[name] = evaluate(predictor, test, train)
    return Report(results=results, markdown=render_table(results))


def evaluate_policy_on_traces(
    model_dir: str | Path, test: Sequence[Trace], train: Sequence[Trace] | None = None
) -> Report:
    """``compare_with_floors`` for the policy saved in ``model_dir``."""
    policy = LMPolicy.load(model_dir)
    return compare_with_floors(policy, test, train, name=f"lm policy ({policy.version_})")
