"""``autopilot policy evaluate``: a saved policy beside the two floors (fitted on the training traces) and, on
sandbox traces, the ceiling; on timed traces, the accuracy on the test cases the log saw through beside the
possibly right-censored rest (``policy.censoring``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.baselines.floors import MostFrequentPerScreen, SuffixNGram
from policy.censoring import CENSORING_NOTE, CensoringHorizon, censoring_breakdown, censoring_table
from policy.combined import CombinedPolicy, load_policy
from policy.evaluate import BATCH_SIZE, EvalResult, evaluate_with_scores, render_table
from policy.predictor import NextActionPredictor
from schemas.trace import Trace


@dataclass(frozen=True)
class Report:
    results: dict[str, EvalResult]
    markdown: str
    censoring: dict[str, dict[str, Any]] = field(default_factory=dict)  # predictor -> CensoringBreakdown.to_dict()

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: result.model_dump(mode="json") for name, result in self.results.items()}
        if self.censoring:
            data["censoring"] = self.censoring
        return data


def compare_with_floors(
    predictor: NextActionPredictor,
    test: Sequence[Trace],
    train: Sequence[Trace] | None = None,
    name: str = "lm policy",
    batch_size: int = BATCH_SIZE,
) -> Report:
    """Evaluate a fitted predictor on ``test`` under ``name``; with ``train``, also the two floors fitted on it and
    the split of the test steps by whether their prefix occurs in training. For a ``CombinedPolicy`` the markdown
    ends with which predictor it chose where and the held-out figures behind the choice (``choice_markdown``):
    what the demo prints beside the floors. ``batch_size``: states per ``predict`` call (smaller keeps an LM's
    packed scoring passes small)."""
    results: dict[str, EvalResult] = {}
    censoring: dict[str, dict[str, Any]] = {}
    horizon = CensoringHorizon.fit(train, test) if train else None
    predictors: list[tuple[str, NextActionPredictor]] = []
    if train:
        predictors += [(floor.name, floor) for floor in (MostFrequentPerScreen().fit(train), SuffixNGram().fit(train))]
    predictors.append((name, predictor))
    for label, member in predictors:
        results[label], scores = evaluate_with_scores(member, test, train, batch_size=batch_size)
        if horizon is not None:
            censoring[label] = censoring_breakdown(scores, test, horizon).to_dict()
    markdown = render_table(results)
    if horizon is not None:
        markdown += "\n\n## Right-censored test cases\n\n" + CENSORING_NOTE.format(percentile=100 * horizon.quantile)
        markdown += "\n\n" + censoring_table(list(censoring.items()))
    if isinstance(predictor, CombinedPolicy):
        markdown += "\n\n## Which predictor answers where (chosen on held-out training cases)\n\n"
        markdown += predictor.choice_markdown() + "\n"
    return Report(results=results, markdown=markdown, censoring=censoring)


def evaluate_policy_on_traces(
    model_dir: str | Path, test: Sequence[Trace], train: Sequence[Trace] | None = None
) -> Report:
    """``compare_with_floors`` for the policy saved in ``model_dir`` (a combined policy or an LM policy)."""
    policy = load_policy(model_dir)
    kind = "combined policy" if isinstance(policy, CombinedPolicy) else "lm policy"
    return compare_with_floors(policy, test, train, name=f"{kind} ({policy.version_})")
