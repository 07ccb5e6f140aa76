"""Copilot mode in the sandbox: a policy proposes each next action, the simulated operator reviews it.

Accepted proposals are executed as proposed; otherwise the operator does their own action. Every review is
recorded with the sandbox's truth about whether the proposal was acceptable, so critic labels (accept / reject,
with a graded reason) stay separate from policy corrections (what the operator did instead).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from sandbox.operators import SimOperator, operator_pool, review
from sandbox.platform import MAX_STEPS, SandboxPlatform
from sandbox.scenario import Scenario
from sandbox.simulate import StepModel, sample, step_model, update_posterior
from schemas import Action, RejectReason, UIState, Verdict, action_key

# A policy for the sandbox's copilot loop: the state, plus the sandbox's step model (only the Bayes-optimal
# reference policy may look at it; a learned policy ignores it).
Policy = Callable[[UIState, StepModel], Action]


def bayes_policy(state: UIState, model: StepModel) -> Action:
    """The best possible policy: the most probable next action given everything observable."""
    best = model.best()
    assert best is not None
    return best


@dataclass(frozen=True)
class CopilotStep:
    state: UIState
    proposed: Action
    verdict: Verdict
    reason: RejectReason | None
    executed: Action
    acceptable: bool
    operator_id: str


def copilot_case(
    platform: SandboxPlatform,
    case_id: str,
    operator: SimOperator,
    pool: list[SimOperator],
    policy: Policy,
    rng: random.Random,
) -> list[CopilotStep]:
    posterior = {op.operator_id: 1.0 / len(pool) for op in pool}
    steps: list[CopilotStep] = []
    for _ in range(MAX_STEPS):
        case = platform.case(case_id)
        if case.ended:
            break
        state = platform.observe(case_id)
        model = step_model(platform, case_id, pool, posterior)
        own_dist = model.per_operator[operator.operator_id]
        if not own_dist:
            break
        own = sample(own_dist, rng)
        proposed = policy(state, model)
        answer = review(operator, proposed, own, model.bases, rng)
        executed = proposed if answer.verdict == Verdict.ACCEPT else own
        steps.append(
            CopilotStep(
                state, proposed, answer.verdict, answer.reason, executed, answer.acceptable, operator.operator_id
            )
        )
        posterior = update_posterior(posterior, model, action_key(executed))
        platform.act(case_id, executed)
    return steps


def run_copilot(
    sessions: int, seed: int, policy: Policy = bayes_policy, scenario: Scenario | None = None, start_index: int = 0
) -> list[CopilotStep]:
    scenario = scenario or Scenario()
    platform = SandboxPlatform(scenario, seed)
    pool = operator_pool(scenario.operators, seed)
    out: list[CopilotStep] = []
    for index in range(start_index, start_index + sessions):
        rng = random.Random(f"{seed}:{index}:copilot")
        case_id = platform.open_case(case_index=index)
        operator = pool[rng.randrange(len(pool))]
        out.extend(copilot_case(platform, case_id, operator, pool, policy, rng))
        platform.forget(case_id)
    return out
