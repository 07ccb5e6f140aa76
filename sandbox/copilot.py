"""Copilot mode in the sandbox: a policy proposes each next action, the simulated operator reviews it.

Accepted proposals are executed as proposed; otherwise the operator does their own action. Every review is
recorded with the sandbox's truth about whether the proposal was acceptable, so critic labels (accept / reject,
with a graded reason) stay separate from policy corrections (what the operator did instead).

In the calibrated world the customer may write while the operator reviews (``SandboxPlatform.nudge``): the
screen changed under the proposal, so it is rejected with reason ``environment`` and nothing is executed; the
operator re-observes and the policy proposes again on the new state (re-observe and retry).

``run_copilot`` works one case at a time with a per-state policy; ``run_copilot_batched`` keeps many cases open
in lockstep so a learned policy can propose for all of them in one batched call.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sandbox.operators import Review, SimOperator, acceptable, operator_pool, review
from sandbox.platform import MAX_STEPS, SandboxPlatform
from sandbox.scenario import Scenario
from sandbox.simulate import StepModel, sample, step_model, update_posterior
from schemas import Action, RejectReason, UIState, Verdict, action_key
from schemas.progress import progress_bar

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
    executed: Action | None  # None: the screen changed under the proposal (environment), nothing was done
    acceptable: bool
    operator_id: str


def _stale(proposed: Action, model: StepModel, operator: SimOperator) -> Review:
    """The review of a proposal whose screen changed before the operator could act on it."""
    ok = acceptable(proposed, model.bases, model.guesses if operator.flags_guesses else frozenset(),
                    operator.strict_facts)  # fmt: skip
    return Review(Verdict.REJECT, RejectReason.ENVIRONMENT, None, ok)


def _failed(answer: Review) -> Review:
    """An accepted proposal whose execution failed in the environment: the operator reports it as such."""
    return Review(Verdict.REJECT, RejectReason.ENVIRONMENT, None, answer.acceptable)


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
        if platform.nudge(case_id):  # the screen changed under the proposal: re-observe and retry
            stale = _stale(proposed, model, operator)
            steps.append(CopilotStep(state, proposed, stale.verdict, stale.reason, None, stale.acceptable,
                                     operator.operator_id))  # fmt: skip
            continue
        answer = review(operator, proposed, own, model.bases, rng, guesses=model.guesses,
                        other_reject=platform.other_reject_rate(case_id))  # fmt: skip
        executed = proposed if answer.verdict == Verdict.ACCEPT else own
        posterior = update_posterior(posterior, model, action_key(executed))
        platform.act(case_id, executed)
        if answer.verdict == Verdict.ACCEPT and platform.failed(case_id):
            answer = _failed(answer)  # the accepted action failed in the environment (a tool did not answer)
        steps.append(
            CopilotStep(
                state, proposed, answer.verdict, answer.reason, executed, answer.acceptable, operator.operator_id
            )
        )
    return steps


def run_copilot(
    sessions: int, seed: int, policy: Policy = bayes_policy, scenario: Scenario | None = None, start_index: int = 0
) -> list[CopilotStep]:
    scenario = scenario or Scenario()
    platform = SandboxPlatform(scenario, seed)
    pool = operator_pool(scenario.operators, seed, scenario.world)
    out: list[CopilotStep] = []
    for index in range(start_index, start_index + sessions):
        rng = random.Random(f"{seed}:{index}:copilot")
        case_id = platform.open_case(case_index=index)
        operator = pool[rng.randrange(len(pool))]
        out.extend(copilot_case(platform, case_id, operator, pool, policy, rng))
        platform.forget(case_id)
    return out


# --- lockstep batched copilot ----------------------------------------------------------------------------------

P = TypeVar("P")  # whatever the policy proposes (a schemas.Proposal for the LM policy); the sandbox only needs
# its action, through ``action_of``, so it never imports policy code.


@dataclass(frozen=True)
class BatchedCopilotStep(Generic[P]):
    """One reviewed proposal. ``own_action`` is what the operator did instead (None when they accepted): policy
    correction data, kept apart from the critic's label (``verdict`` / ``reason``)."""

    case_index: int
    turn: int  # the case's turns so far: the state's step, plus one per environment rejection (no action taken)
    state: UIState
    proposal: P
    proposed: Action
    verdict: Verdict
    reason: RejectReason | None
    executed: Action | None  # None: the screen changed under the proposal (environment), nothing was done
    own_action: Action | None
    acceptable: bool  # the sandbox's truth about the proposal: for analysis, never a critic feature
    operator_id: str


@dataclass
class _OpenCase:
    index: int
    case_id: str
    operator: SimOperator
    rng: random.Random
    posterior: dict[str, float]
    turns: int = 0


@dataclass(frozen=True)
class _Turn:
    """A case waiting for its proposal: the state shown, the sandbox's step model and the operator's own pick."""

    case: _OpenCase
    state: UIState
    model: StepModel
    own: Action


def _next_turn(platform: SandboxPlatform, pool: list[SimOperator], open_case: _OpenCase) -> _Turn | None:
    """Advance ``open_case`` to its next decision, or None when it is over. The same draws, in the same order,
    as one iteration of ``copilot_case`` up to the policy call, so both runners see identical cases."""
    if open_case.turns >= MAX_STEPS:
        return None
    if platform.case(open_case.case_id).ended:
        return None
    state = platform.observe(open_case.case_id)
    model = step_model(platform, open_case.case_id, pool, open_case.posterior)
    own_dist = model.per_operator[open_case.operator.operator_id]
    if not own_dist:
        return None
    return _Turn(open_case, state, model, sample(own_dist, open_case.rng))


def run_copilot_batched(
    sessions: int,
    seed: int,
    propose: Callable[[Sequence[UIState]], Sequence[P | None]],
    action_of: Callable[[P], Action],
    scenario: Scenario | None = None,
    start_index: int = 0,
    concurrency: int = 64,
    progress: bool = False,
) -> Iterator[BatchedCopilotStep[P]]:
    """Copilot mode for cases ``start_index ..`` with up to ``concurrency`` cases open at once: each round, every
    open case advances to its next state and ``propose`` is called once for all of them.

    Per case, the randomness is exactly that of ``run_copilot`` (a per-case rng, the same draws in the same
    order), so a deterministic policy yields the same reviews in both runners; only the order in which steps of
    different cases are yielded differs (rounds, not case after case). Where ``propose`` returns None (no valid
    candidate) the operator does their own action and no review is recorded."""
    # Checked here, not in the generator: a bad argument fails at the call, not at the first step.
    if sessions < 0:
        raise ValueError(f"sessions: must be >= 0, got {sessions}")
    if concurrency < 1:
        raise ValueError(f"concurrency: must be >= 1, got {concurrency}")
    return _lockstep(sessions, seed, propose, action_of, scenario or Scenario(), start_index, concurrency, progress)


def _lockstep(
    sessions: int,
    seed: int,
    propose: Callable[[Sequence[UIState]], Sequence[P | None]],
    action_of: Callable[[P], Action],
    scenario: Scenario,
    start_index: int,
    concurrency: int,
    progress: bool,
) -> Iterator[BatchedCopilotStep[P]]:
    platform = SandboxPlatform(scenario, seed)
    pool = operator_pool(scenario.operators, seed, scenario.world)
    next_index, end = start_index, start_index + sessions
    waiting: list[_Turn] = []
    with progress_bar(total=sessions, desc="copilot", unit="case", disable=not progress, leave=False) as bar:

        def advance(open_case: _OpenCase) -> None:
            turn = _next_turn(platform, pool, open_case)
            if turn is None:
                platform.forget(open_case.case_id)
                bar.update(1)
            else:
                waiting.append(turn)

        while True:
            # Cases open in index order, as in run_copilot: opening a case writes its CRM rows.
            while len(waiting) < concurrency and next_index < end:
                rng = random.Random(f"{seed}:{next_index}:copilot")
                case_id = platform.open_case(case_index=next_index)
                operator = pool[rng.randrange(len(pool))]
                posterior = {op.operator_id: 1.0 / len(pool) for op in pool}
                advance(_OpenCase(next_index, case_id, operator, rng, posterior))
                next_index += 1
            if not waiting:
                return
            turns, waiting = waiting, []
            proposals = propose([t.state for t in turns])
            if len(proposals) != len(turns):
                raise ValueError(f"propose: returned {len(proposals)} proposals for {len(turns)} states")
            for turn, proposal in zip(turns, proposals, strict=True):
                case = turn.case
                if proposal is None:
                    executed = turn.own
                elif platform.nudge(case.case_id):  # the screen changed under the proposal: re-observe, retry
                    proposed = action_of(proposal)
                    stale = _stale(proposed, turn.model, case.operator)
                    yield BatchedCopilotStep(
                        case_index=case.index,
                        turn=case.turns,
                        state=turn.state,
                        proposal=proposal,
                        proposed=proposed,
                        verdict=stale.verdict,
                        reason=stale.reason,
                        executed=None,
                        own_action=None,
                        acceptable=stale.acceptable,
                        operator_id=case.operator.operator_id,
                    )
                    case.turns += 1
                    advance(case)
                    continue
                else:
                    proposed = action_of(proposal)
                    answer = review(case.operator, proposed, turn.own, turn.model.bases, case.rng,
                                    guesses=turn.model.guesses,
                                    other_reject=platform.other_reject_rate(case.case_id))  # fmt: skip
                    accepted = answer.verdict == Verdict.ACCEPT
                    executed = proposed if accepted else turn.own
                    case.posterior = update_posterior(case.posterior, turn.model, action_key(executed))
                    platform.act(case.case_id, executed)
                    if accepted and platform.failed(case.case_id):
                        answer, accepted = _failed(answer), False  # the accepted action failed (a tool outage)
                    yield BatchedCopilotStep(
                        case_index=case.index,
                        turn=case.turns,
                        state=turn.state,
                        proposal=proposal,
                        proposed=proposed,
                        verdict=answer.verdict,
                        reason=answer.reason,
                        executed=executed,
                        own_action=None if accepted or answer.reason == RejectReason.ENVIRONMENT else turn.own,
                        acceptable=answer.acceptable,
                        operator_id=case.operator.operator_id,
                    )
                    case.turns += 1
                    advance(case)
                    continue
                case.posterior = update_posterior(case.posterior, turn.model, action_key(executed))
                platform.act(case.case_id, executed)
                case.turns += 1
                advance(case)
