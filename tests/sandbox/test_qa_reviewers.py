"""After-the-fact reviews (sandbox.qa_reviewers): a QA reviewer judges a past step exactly as a copilot reviewer
would have judged it live, so the realised error the audits measure is on the label the critic was calibrated on."""

from __future__ import annotations

import random

import pytest

from sandbox.operators import Review, SimOperator, operator_pool, review
from sandbox.platform import CaseNotFound, SandboxPlatform
from sandbox.qa_reviewers import SnapshottingAdapter, judge_snapshot
from sandbox.scenario import SCENARIOS
from sandbox.simulate import sample, step_model
from schemas import Action, ClickControl

Reviewed = list[tuple[int, list[tuple[Action, Review]]]]


def _walk(
    platform: SandboxPlatform, adapter: SnapshottingAdapter, case_id: str, seed: int, max_steps: int = 40
) -> tuple[SimOperator, Reviewed]:
    """Work the case with its operators' own actions through the snapshotting adapter; per step the live review
    (seeded) of the own action and of a Next click, as the copilot reviewer answers them."""
    pool = operator_pool(seed=seed)
    operator = pool[seed % len(pool)]
    posterior = {op.operator_id: 1.0 / len(pool) for op in pool}
    rng = random.Random(seed)
    live: Reviewed = []
    for step in range(max_steps):
        if platform.case(case_id).ended:
            break
        model = step_model(platform, case_id, pool, posterior)
        dist = model.per_operator[operator.operator_id]
        if not dist:
            break
        own = sample(dist, rng)
        other_reject = platform.other_reject_rate(case_id)
        reviews: list[tuple[Action, Review]] = []
        for proposed in (own, ClickControl(control_id="next")):
            review_rng = random.Random(f"{seed}:{step}:{proposed}")
            expected = review(
                operator, proposed, sample(dist, review_rng), model.bases, review_rng,
                guesses=model.guesses, other_reject=other_reject,
            )  # fmt: skip
            reviews.append((proposed, expected))
        live.append((step, reviews))
        adapter.apply(case_id, own, f"{case_id}:{step}")
    return operator, live


@pytest.mark.parametrize("scenario", ["default", "classic"])
def test_an_after_the_fact_review_is_the_live_review(scenario: str) -> None:
    """The snapshot keeps the case's world and the reviewer uses the world's work items and the case's own
    take-over rate: with the same random draws, the verdict on every past step equals the live one. (Before, the
    snapshot fell back to the classic world, so in the calibrated world a fill of a corrected order number, which
    the operators do, was judged a model error.)"""
    platform = SandboxPlatform(SCENARIOS[scenario], seed=7)
    adapter = SnapshottingAdapter(platform)
    compared = differing = 0
    for index in range(12):
        case_id = platform.open_case(case_index=index)
        operator, live = _walk(platform, adapter, case_id, seed=index)
        assert live, "the walk took no step"
        for step, reviews in live:
            snapshot = adapter.snapshot(case_id, step)
            assert snapshot is not None
            assert snapshot.view.world == platform.scenario.world
            for proposed, expected in reviews:
                after = judge_snapshot(
                    platform, operator, case_id, snapshot, proposed, random.Random(f"{index}:{step}:{proposed}")
                )
                compared += 1
                differing += after != expected
    assert compared > 100
    assert differing == 0


def test_a_snapshot_is_the_case_as_it_was() -> None:
    platform = SandboxPlatform(SCENARIOS["default"], seed=7)
    adapter = SnapshottingAdapter(platform)
    case_id = platform.open_case(case_index=3)
    _, live = _walk(platform, adapter, case_id, seed=3)
    assert len(live) >= 3
    first = adapter.snapshot(case_id, 0)
    assert first is not None
    assert first.view.values == {} and first.view.said == set() and first.view.clicked == set()
    assert len(first.view.chat) == 1  # the customer's opening message only, not the conversation since
    assert adapter.snapshot(case_id, len(live)) is None  # no action was applied at that step


def test_unknown_case_raises() -> None:
    platform = SandboxPlatform(SCENARIOS["default"], seed=7)
    adapter = SnapshottingAdapter(platform)
    case_id = platform.open_case(case_index=0)
    proposed: Action = ClickControl(control_id="next")
    adapter.apply(case_id, proposed, "k0")
    snapshot = adapter.snapshot(case_id, 0)
    assert snapshot is not None
    platform.forget(case_id)
    with pytest.raises(CaseNotFound):
        judge_snapshot(platform, operator_pool()[0], case_id, snapshot, proposed, random.Random(0))
