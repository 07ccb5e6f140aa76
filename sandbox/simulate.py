"""Operators working cases, step by step, with the sandbox's own Bayes ceiling computed along the way.

At every step the best possible policy sees only the UIState. It does not know which operator works the case,
but it can infer the operator's style from what has been done so far. The simulator tracks exactly that: a
posterior over the operator pool, updated with the likelihood of every action taken. The predictive
distribution P(action | state so far) = sum over operators of posterior x the operator's own distribution, and
``bayes_p`` = its maximum: the probability that the Bayes-optimal policy predicts this step exactly, and
``bayes_hit`` = whether it did (its mean over the steps of one action type is that policy's accuracy on them).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

from sandbox.operators import (
    READ_SECONDS,
    Distribution,
    SimOperator,
    operator_distribution,
    style_bases,
)
from sandbox.platform import MAX_STEPS, SandboxPlatform
from schemas import Action, ChatRole, Trace, TraceSource, TraceStep, action_key


@dataclass(frozen=True)
class StepModel:
    """What the sandbox knows about the next step of a case: each operator's distribution and the mixture."""

    per_operator: dict[str, Distribution]
    predictive: dict[str, tuple[Action, float]]
    bases: dict[str, dict[str, tuple[Action, float, str]]]
    guesses: frozenset[str] = frozenset()  # items whose action would be a guess here (sandbox.playbook.Item.guess)

    @property
    def bayes_p(self) -> float:
        return max((p for _a, p in self.predictive.values()), default=0.0)

    @property
    def bayes_type_p(self) -> float:
        return max(self._type_mass.values(), default=0.0)

    @cached_property
    def _type_mass(self) -> dict[str, float]:
        """The predictive's mass per action type (read for ``bayes_type_p`` and ``best_type`` at every step)."""
        by_type: dict[str, float] = defaultdict(float)
        for action, p in self.predictive.values():
            by_type[action.type] += p
        return by_type

    def best(self) -> Action | None:
        if not self.predictive:
            return None
        return max(self.predictive.values(), key=lambda ap: ap[1])[0]

    def best_type(self) -> str | None:
        by_type = self._type_mass
        return max(by_type, key=by_type.__getitem__, default=None)


def step_model(
    platform: SandboxPlatform, case_id: str, pool: list[SimOperator], posterior: dict[str, float]
) -> StepModel:
    case = platform.case(case_id)
    view = platform.view(case_id)
    screen = platform.playbook_screen(case_id)
    schema = case.spec.schemas[case.screen_id]
    bases = style_bases(screen, view, schema)
    per_operator = {op.operator_id: operator_distribution(op, bases, schema) for op in pool}
    predictive: dict[str, tuple[Action, float]] = {}
    for op in pool:
        w = posterior[op.operator_id]
        if w == 0.0:
            continue
        for key, (action, p) in per_operator[op.operator_id].items():
            prev = predictive.get(key)
            predictive[key] = (action, w * p + (prev[1] if prev else 0.0))
    return StepModel(per_operator, predictive, bases, screen.guessing(view))


def sample(dist: Distribution, rng: random.Random) -> Action:
    u = rng.random()
    acc = 0.0
    last: Action | None = None
    for action, p in dist.values():
        acc += p
        last = action
        if u < acc:
            return action
    assert last is not None, "empty distribution"
    return last  # rounding: the total may be a hair below 1


def update_posterior(posterior: dict[str, float], model: StepModel, key: str) -> dict[str, float]:
    updated = {o: w * (model.per_operator[o].get(key, (None, 0.0))[1]) for o, w in posterior.items()}
    total = sum(updated.values())
    if total <= 0.0:  # an action no operator would take (only possible for an external policy): keep the prior
        return posterior
    return {o: w / total for o, w in updated.items()}


def work_case(
    platform: SandboxPlatform,
    case_id: str,
    operator: SimOperator,
    pool: list[SimOperator],
    rng: random.Random,
) -> Trace:
    """Let ``operator`` work the case to the end; return its trace with per-step ceilings and timings."""
    posterior = {op.operator_id: 1.0 / len(pool) for op in pool}
    steps: list[TraceStep] = []
    handling = 0.0
    seen_customer = 0
    for _ in range(MAX_STEPS):
        case = platform.case(case_id)
        if case.ended:
            break
        platform.nudge(case_id)  # the customer may write while the operator works (calibrated world)
        state = platform.observe(case_id)
        customer_msgs = sum(1 for m in case.chat if m.role == ChatRole.CUSTOMER)
        reading = READ_SECONDS * (customer_msgs - seen_customer)
        seen_customer = customer_msgs
        model = step_model(platform, case_id, pool, posterior)
        own = model.per_operator[operator.operator_id]
        if not own:
            platform._end(case, "stuck", None)  # no playbook item left: a modelling gap, counted by tests
            break
        action = sample(own, rng)
        best = model.best()
        seconds = operator.action_seconds(action, rng) + reading
        handling += seconds
        # model_construct: the state was validated when observed and the rest is the simulator's own data;
        # validating again would recompute the state's etag (a third of the generation time).
        steps.append(
            TraceStep.model_construct(
                step=len(steps),
                state=state,
                action=action,
                operator_id=operator.operator_id,
                duration_s=round(seconds, 2),
                bayes_p=round(min(1.0, model.bayes_p), 6),
                bayes_type_p=round(min(1.0, model.bayes_type_p), 6),
                bayes_hit=best is not None and action_key(best) == action_key(action),
                bayes_type_hit=model.best_type() == action.type,
            )
        )
        posterior = update_posterior(posterior, model, action_key(action))
        platform.act(case_id, action)
    case = platform.case(case_id)
    outcome = platform.outcome(case_id)
    return Trace(
        trace_id=case.case_id,
        source=TraceSource.SANDBOX,
        case_id=case.case_id,
        process_id=case.spec.process_id,
        steps=steps,
        attributes={
            "case_index": case.index,
            "seed": platform.seed,
            "scenario": platform.scenario.name,
            "customer_id": case.seed.customer_id,
            "operator_id": operator.operator_id,
            "handling_time_s": round(handling, 2),
            "rules": case.rules,
        },
        ground_truth={
            "truth": case.seed.truth,
            "prefs": case.seed.prefs,
            "ambiguous": case.seed.ambiguous,
            "outcome": outcome,
        },
    )
