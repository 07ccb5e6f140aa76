"""The calibrated world (sandbox.world): what makes cases hard, how reviewers judge, and the classic world kept."""

from __future__ import annotations

import re
from collections import defaultdict
from itertools import pairwise

import pytest

from sandbox.copilot import bayes_policy, run_copilot
from sandbox.generate import iter_traces
from sandbox.operators import acceptable, operator_pool
from sandbox.platform import SandboxPlatform
from sandbox.processes.customers import FOLLOWUPS, SECOND_REQUESTS, followup_topic, second_request_topic
from sandbox.scenario import SCENARIOS, Scenario
from sandbox.simulate import step_model
from sandbox.view import NUDGES, ORDER_RE, View, classify_operator_text
from sandbox.world import World
from schemas import ChatRole, Panel, RejectReason, SelectOption, SendTextToChat, Trace

CALIBRATED_INTENTS = {"ask_recheck", "ask_dispute", "ask_repair", *(t.intent for t in SECOND_REQUESTS.values())}
CALIBRATED_INTENTS |= {t.intent for t in FOLLOWUPS.values()}


@pytest.fixture(scope="module")
def calibrated() -> list[Trace]:
    return iter_traces(300, seed=31)


def _view(trace: Trace, step: int = -1) -> View:
    state = trace.steps[step].state
    return View(trace.process_id, state.screen.screen_id, state.values, state.panels, state.chat, world=World())


def _operator_intents(trace: Trace) -> list[str]:
    return [classify_operator_text(s.action.text) for s in trace.steps if isinstance(s.action, SendTextToChat)]


def test_the_default_scenario_is_the_calibrated_world_and_classic_is_kept() -> None:
    assert Scenario().world == World() == SCENARIOS["default"].world
    assert SCENARIOS["classic"].world == World.classic() and SCENARIOS["classic"].world.is_classic
    assert all(SCENARIOS[name].world == World() for name in ("drift", "new_process", "long_tail", "only_new"))
    classic = iter_traces(80, seed=31, scenario=SCENARIOS["classic"])
    for trace in classic:
        assert not set(_operator_intents(trace)) & CALIBRATED_INTENTS
        chat = trace.steps[-1].state.chat
        assert not any(m.text in NUDGES for m in chat)
        assert "contract_end" not in trace.steps[0].state.panels["customer"].fields


def test_second_requests_and_follow_ups_are_answered_before_the_case_is_closed(calibrated: list[Trace]) -> None:
    seconds = followups = 0
    for trace in calibrated:
        intents = _operator_intents(trace)
        view = _view(trace)
        topic = second_request_topic(view)
        closed = trace.steps[-1].action.type == "close_chat"  # a transfer leaves it to the specialist
        if topic is not None and closed:
            seconds += 1
            assert SECOND_REQUESTS[topic].intent in intents, trace.trace_id
        question = followup_topic(view)
        if question is not None:
            followups += 1
            assert FOLLOWUPS[question].intent in intents, trace.trace_id
        assert trace.steps[-1].action.type in ("close_chat", "transfer_chat")
    assert seconds > 20 and followups > 20  # both are common in the calibrated world
    contract = [
        t
        for t in calibrated
        if second_request_topic(_view(t)) == "contract" and t.steps[-1].action.type == "close_chat"
    ]
    for trace in contract:  # the answer states the contract end read from the customer record
        end = trace.steps[0].state.panels["customer"].fields["contract_end"]
        assert any(isinstance(s.action, SendTextToChat) and end in s.action.text for s in trace.steps)


def test_a_mistyped_order_number_is_checked_again_and_looked_up_right(calibrated: list[Trace]) -> None:
    mistyped = 0
    for trace in calibrated:
        opening = trace.steps[0].state.chat[0].text
        typed = ORDER_RE.findall(opening)
        if not typed or trace.ground_truth["outcome"]["status"] is None:
            continue
        real = trace.steps[-1].state.panels.get("order")
        if real is None or real.fields.get("order_id") == f"ORD-{typed[-1]}":
            continue
        mistyped += 1
        intents = _operator_intents(trace)
        assert "ask_recheck" in intents, trace.trace_id
        assert real.fields.get("status") != "not_found"  # the second lookup found the order
    assert mistyped > 5


def test_operators_query_an_order_only_when_it_is_for_another_item(calibrated: list[Trace]) -> None:
    """An order for another item than the customer named is queried, naming both items; a delivery whose lookup
    lists its tracking scans is the customer's order all the same (the scans are no items)."""
    queried = 0
    for trace in calibrated:
        for step in trace.steps:
            action = step.action
            if not isinstance(action, SendTextToChat) or classify_operator_text(action.text) != "ask_recheck":
                continue
            order = step.state.panels.get("order")
            if order is None or order.fields.get("status") == "not_found":
                continue
            queried += 1
            found = order.fields["item"] if not any("item" in row for row in order.rows) else None
            assert found is None or found in action.text, (trace.trace_id, action.text)
            assert not re.search(r"(is your|is for a|is a)\s*[.,;]", action.text), (trace.trace_id, action.text)
    assert queried >= 5
    delivered = [t for t in calibrated if t.process_id == "delivery_status"]
    with_scans = [t for t in delivered if any(s.state.panels.get("order", Panel()).rows for s in t.steps)]
    assert len(with_scans) >= 10


def test_customers_nudge_and_the_operator_reads_past_it(calibrated: list[Trace]) -> None:
    nudged = [t for t in calibrated if any(m.text in NUDGES for m in t.steps[-1].state.chat)]
    assert nudged
    correct = sum(bool(t.ground_truth["outcome"]["correct"]) for t in calibrated) / len(calibrated)
    assert 0.8 < correct < 0.99  # the extra work does not make operators worse


def _case_at(platform: SandboxPlatform, process: str, screen: str, start: int) -> tuple[str, View]:
    """Open cases of ``process`` and let the most likely operator action run until ``screen`` is reached."""
    pool = operator_pool(12, 0)
    for index in range(start, start + 200):
        case_id = platform.open_case(process_id=process, case_index=index)
        posterior = {op.operator_id: 1 / len(pool) for op in pool}
        for _ in range(30):
            if platform.case(case_id).screen_id == screen:
                return case_id, platform.view(case_id)
            best = step_model(platform, case_id, pool, posterior).best()
            assert best is not None
            platform.apply(case_id, best)
    raise AssertionError(f"no case reached {screen}")


def test_reviewers_call_a_committed_guess_a_model_error() -> None:
    for world, flagged in ((World(), True), (World.classic(), False)):
        platform = SandboxPlatform(Scenario(world=world), seed=3)
        pool = operator_pool(12, 3, world)
        found = False
        for index in range(0, 400, 20):
            case_id, view = _case_at(platform, "refund_damaged", "rf_assess", index)
            if platform.case(case_id).seed.ambiguous and "photo" not in view.customer_text().lower():
                found = True
                break
        assert found
        posterior = {op.operator_id: 1 / len(pool) for op in pool}
        model = step_model(platform, case_id, pool, posterior)
        guess = SelectOption(control_id="remedy", option="refund")
        assert "remedy" in model.guesses
        assert acceptable(guess, model.bases) is True  # some operator style would do it ...
        judged = acceptable(guess, model.bases, model.guesses if pool[0].flags_guesses else frozenset())
        assert judged is (not flagged)  # ... but a calibrated reviewer calls the guess an error
        ask = next(a for base in model.bases.values() for a, _p, item in base.values() if item == "ask_remedy")
        assert acceptable(ask, model.bases, model.guesses)


def test_a_reply_must_state_the_right_named_facts() -> None:
    platform = SandboxPlatform(Scenario(), seed=4)
    case_id, _ = _case_at(platform, "plan_change", "pc_done", 0)
    pool = operator_pool(12, 4)
    model = step_model(platform, case_id, pool, {op.operator_id: 1 / len(pool) for op in pool})
    right = model.best()
    assert isinstance(right, SendTextToChat) and classify_operator_text(right.text) == "confirm"
    plan = platform.view(case_id).panel("case", "new_plan")
    other = next(p for p in ("basic", "plus", "premium", "family") if p != plan)
    wrong_plan = SendTextToChat(text=right.text.replace(plan, other))
    assert acceptable(right, model.bases, strict=True)
    assert acceptable(wrong_plan, model.bases, strict=False)  # the classic check compares numbers only
    assert not acceptable(wrong_plan, model.bases, strict=True)
    fee = next(tok for tok in right.text.replace(",", " ").split() if tok.count(".") == 1 and tok[0].isdigit())
    wrong_fee = SendTextToChat(text=right.text.replace(fee, "99.99"))
    assert not acceptable(wrong_fee, model.bases, strict=True)


def test_environment_rejections_are_visible_and_the_step_is_proposed_again() -> None:
    steps = run_copilot(80, seed=8, policy=bayes_policy)
    by_case = defaultdict(list)
    for step in steps:
        by_case[step.state.case_id].append(step)
    nudged = failed = 0
    for case_steps in by_case.values():
        for before, after in pairwise(case_steps):
            if before.reason != RejectReason.ENVIRONMENT:
                continue
            assert after.state.etag != before.state.etag
            customers = [m for m in after.state.chat if m.role == ChatRole.CUSTOMER]
            if before.executed is None:  # the customer wrote under the proposal: nothing done, the same step again
                nudged += 1
                assert after.state.step == before.state.step and customers[-1].text in NUDGES
            else:  # the accepted tool click failed: its panel says so, and the lookup is tried again
                failed += 1
                assert before.executed == before.proposed
                assert any(p.fields.get("error") for p in after.state.panels.values())
    assert nudged > 0 and failed > 0
    reasons = {s.reason for s in steps if s.reason is not None}
    assert reasons >= {RejectReason.ENVIRONMENT, RejectReason.ACCEPTABLE_ALTERNATIVE, RejectReason.OTHER}


def test_upset_customers_make_operators_take_over_more_often() -> None:
    platform = SandboxPlatform(Scenario(), seed=9)
    rates = {platform.other_reject_rate(platform.open_case(case_index=i)) for i in range(200)}
    world = World()
    assert rates == {world.other_reject, world.other_reject + world.other_upset}
    classic = SandboxPlatform(SCENARIOS["classic"], seed=9)
    assert classic.other_reject_rate(classic.open_case(case_index=0)) is None
