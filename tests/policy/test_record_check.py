"""The record check (policy.record_check): which fields it learns to check and with which queries, how it reads a
state (contradicted, pending until queried, checked anew after another lookup) and the reply guard's rule
against going on with a record that is not the customer's. Hand-built traces for the rules; the sandbox's own
traces for the real thing."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from policy.candidates import TemplateBank
from policy.policy import LMPolicy, _Scored
from policy.record_check import NAMED, RecordCheck, corrected
from policy.replies import ReplyGuard
from sandbox.generate import iter_traces
from schemas import Action, ChatMessage, ChatRole, ClickControl, CloseChat, Panel, ScreenSchema, SendTextToChat, UIState
from schemas.screen import ButtonControl, ChatControl
from schemas.trace import Trace, TraceSource, TraceStep
from tests.policy.scripted import Scripted

ITEMS = ("desk lamp", "blender", "backpack", "headphones")
QUERY = "That order ({order}) is for a {shown}, not the {item}; could you double-check the number?"


def state(chat: Sequence[tuple[ChatRole, str]], order: str | None = None, shown: str | None = None) -> UIState:
    screen = ScreenSchema(
        screen_id="s", process_id="refund", title="S",
        controls=[ChatControl(id="chat", label="Chat"), ButtonControl(id="next", label="Next")],
        resolution_codes=["resolved"],
    )  # fmt: skip
    panels = {"customer": Panel(title="Customer", fields={"name": "Ann Lee"})}
    if order is not None and shown is not None:
        panels["order"] = Panel(title="Order", fields={"order_id": order, "item": shown, "status": "delivered"})
    messages = [ChatMessage(role=role, text=text) for role, text in chat]
    return UIState(session_id="S", case_id="C", process_id="refund", screen=screen, chat=messages, panels=panels)


def trace(n: int, rng: random.Random, wrong: bool, query: bool = True) -> Trace:
    """A refund case: the customer names their item and an order; the lookup shows that order's item. With
    ``wrong`` the order is another item's, and (with ``query``) the operator says so and the customer corrects
    the number."""
    item = rng.choice(ITEMS)
    other = rng.choice([i for i in ITEMS if i != item])
    order, right = f"ORD-{n:06d}", f"ORD-{n + 500000:06d}"
    chat: list[tuple[ChatRole, str]] = [(ChatRole.CUSTOMER, f"My {item} arrived broken. Order {order}.")]
    steps: list[tuple[UIState, Action]] = []
    if wrong:
        if query:
            text = QUERY.format(order=order, shown=other, item=item)
            steps.append((state(chat, order, other), SendTextToChat(text=text)))
            chat = [*chat, (ChatRole.OPERATOR, text), (ChatRole.CUSTOMER, f"Sorry, it is {right}.")]
            order = right
        else:
            steps.append((state(chat, order, other), ClickControl(control_id="next")))
    steps.append((state(chat, order, item), ClickControl(control_id="next")))
    steps.append((state(chat, order, item), CloseChat(resolution="resolved")))
    trace_steps = [TraceStep(step=i, state=s, action=a) for i, (s, a) in enumerate(steps)]
    return Trace(trace_id=f"T{n}", source=TraceSource.SANDBOX, case_id=f"C{n}", process_id="refund", steps=trace_steps)


def traces(n: int, seed: int = 0, wrong: float = 0.2) -> list[Trace]:
    rng = random.Random(seed)
    return [trace(i, rng, rng.random() < wrong) for i in range(n)]


def test_it_learns_the_field_customers_name_and_the_replies_that_query_it() -> None:
    check = RecordCheck().fit(traces(200))
    assert list(check.vocabulary_) == ["order.item"]  # not the status, not the customer's name
    assert check.vocabulary_["order.item"] == sorted(ITEMS)
    assert check.queries_["order.item"] == [
        QUERY.format(order="⟦panel.order.order_id⟧", shown="⟦panel.order.item⟧", item=NAMED)
    ]
    assert RecordCheck.from_dict(check.to_dict()).queries_ == check.queries_
    # Operators who go on with the wrong record teach nothing to check; nor do too few cases.
    rng = random.Random(1)
    careless = [trace(i, rng, rng.random() < 0.2, query=False) for i in range(200)]
    assert RecordCheck().fit(careless).vocabulary_ == {}
    assert RecordCheck().fit(traces(20)).vocabulary_ == {}


def test_a_contradicting_record_is_pending_until_queried_and_checked_anew_after_another_lookup() -> None:
    check = RecordCheck().fit(traces(200))
    opening = (ChatRole.CUSTOMER, "My blendr arrived broken. Order ORD-000001.")  # a typo still names it
    wrong = state([opening], "ORD-000001", "backpack")
    assert check.contradicted(wrong) == check.pending(wrong) == ["order.item"]
    assert check.pending(state([opening], "ORD-000001", "blender")) == []  # the record is the customer's
    assert check.pending(state([(ChatRole.CUSTOMER, "Order ORD-000001 is broken.")], "ORD-000001", "backpack")) == []
    query = QUERY.format(order="ORD-000001", shown="backpack", item="blender")
    assert check.queried_by(query, wrong, ["order.item"])
    asked = [opening, (ChatRole.OPERATOR, query)]
    assert check.pending(state(asked, "ORD-000001", "backpack")) == []
    # The customer gives another number and the lookup shows another wrong item: that record is pending again.
    again = state([*asked, (ChatRole.CUSTOMER, "Sorry, ORD-000002.")], "ORD-000002", "headphones")
    assert check.pending(again) == ["order.item"]
    # The query offered names the customer's item.
    offered = check.queries(wrong)
    assert offered == [QUERY.format(order="⟦panel.order.order_id⟧", shown="⟦panel.order.item⟧", item="blender")]


def test_the_guard_queries_the_record_instead_of_going_on() -> None:
    check = RecordCheck().fit(traces(200))
    opening = (ChatRole.CUSTOMER, "My blender arrived broken. Order ORD-000001.")
    go_on = ClickControl(control_id="next")
    query = SendTextToChat(text=QUERY.format(order="ORD-000001", shown="backpack", item="blender"))
    greeting = SendTextToChat(text="Hi Ann, let me check.")
    ranked: list[tuple[Action, float]] = [(go_on, 0.8), (greeting, 0.15), (query, 0.05)]
    wrong = state([opening], "ORD-000001", "backpack")
    guarded = ReplyGuard(Scripted(ranked), record_check=check).propose(wrong)
    assert guarded is not None and guarded.action == query and guarded.alternatives[0].action == go_on
    # A reply proposed (a greeting first) stands; so does going on with the right record, or without the check.
    greet_first: list[tuple[Action, float]] = [(greeting, 0.6), (go_on, 0.3), (query, 0.1)]
    assert ReplyGuard(Scripted(greet_first), record_check=check).propose(wrong).action == greeting  # type: ignore[union-attr]
    right = state([opening], "ORD-000001", "blender")
    assert ReplyGuard(Scripted(ranked), record_check=check).propose(right).action == go_on  # type: ignore[union-attr]
    assert ReplyGuard(Scripted(ranked)).propose(wrong).action == go_on  # type: ignore[union-attr]
    # A query naming an item that is neither the record's nor the customer's is no query: the right one replaces it.
    misnamed = SendTextToChat(text=QUERY.format(order="ORD-000001", shown="backpack", item="desk lamp"))
    guarded = ReplyGuard(Scripted([(misnamed, 0.5), (go_on, 0.3), (query, 0.2)]), record_check=check).propose(wrong)
    assert guarded is not None and guarded.action == query
    # Nor is one that names the record's item where the customer's belongs.
    assert not check.queried_by(
        QUERY.format(order="ORD-000001", shown="backpack", item="backpack"), wrong, ["order.item"]
    )
    only_misnamed: list[tuple[Action, float]] = [(go_on, 0.6), (misnamed, 0.4)]
    assert ReplyGuard(Scripted(only_misnamed), record_check=check).propose(wrong).action == go_on  # type: ignore[union-attr]
    # No query ranked: nothing better to propose, the click stands.
    unranked = [r for r in ranked if r[0] != query]
    assert ReplyGuard(Scripted(unranked), record_check=check).propose(wrong).action == go_on  # type: ignore[union-attr]


def test_on_the_sandbox_it_checks_the_order_item_and_never_stops_an_operator_going_on() -> None:
    worked = iter_traces(500, 11)
    check = RecordCheck().fit(worked[:400])
    assert "order.item" in check.vocabulary_
    pending = [s for t in worked[400:] for s in t.steps if check.pending(s.state)]
    # Where the record is pending, held-out operators reply (the query, or a greeting first): never go on.
    assert pending and all(isinstance(s.action, SendTextToChat) for s in pending)
    queried = [s for s in pending if check.queried_by(s.action.text, s.state, check.pending(s.state))]  # type: ignore[union-attr]
    assert len(queried) >= 0.5 * len(pending)


def test_a_reply_naming_another_cases_item_is_put_right_or_left_out() -> None:
    """A bank reply keeps a training case's item in its wording: the item the customer named takes its place; with
    no item named (or two) there is nothing to put there and the reply is not offered. The record's own item and
    a reply naming no item stay as they are."""
    check = RecordCheck().fit(traces(200))
    stale = QUERY.format(order="ORD-000001", shown="backpack", item="desk lamp")
    named = state([(ChatRole.CUSTOMER, "My blender arrived broken. Order ORD-000001.")], "ORD-000001", "backpack")
    assert corrected(stale, check.items(named)) == QUERY.format(order="ORD-000001", shown="backpack", item="blender")
    assert corrected("Your backpack is on its way.", check.items(named)) == "Your backpack is on its way."
    assert corrected("Let me check.", check.items(named)) == "Let me check."
    unnamed = state([(ChatRole.CUSTOMER, "It arrived broken. Order ORD-000001.")], "ORD-000001", "backpack")
    assert corrected(stale, check.items(unnamed)) is None
    both = state([(ChatRole.CUSTOMER, "My blender and headphones broke. Order ORD-000001.")], "ORD-000001", "backpack")
    assert corrected(stale, check.items(both)) is None
    assert RecordCheck().items(named) == []  # nothing learned: nothing to put right


def test_the_policy_offers_a_stale_item_as_the_customers_and_merges_the_two() -> None:
    policy = LMPolicy()
    policy.record_check_ = RecordCheck().fit(traces(200))
    policy.bank_ = TemplateBank()
    stale_template = QUERY.format(order="⟦panel.order.order_id⟧", shown="⟦panel.order.item⟧", item="desk lamp")
    policy.bank_.add("refund", "chat", stale_template)
    policy.codec_ = object()  # type: ignore[assignment]  # candidates need no model
    policy.model_ = object()  # type: ignore[assignment]
    wrong = state([(ChatRole.CUSTOMER, "My blender arrived broken. Order ORD-000001.")], "ORD-000001", "backpack")
    right = SendTextToChat(text=QUERY.format(order="ORD-000001", shown="backpack", item="blender"))
    candidates = policy.candidates(wrong)
    replies = [c for c in candidates if isinstance(c.action, SendTextToChat)]
    assert {c.text for c in replies} == {f"send {stale_template}", f"send {policy.record_check_.queries(wrong)[0]}"}
    assert all(c.action == right for c in replies)  # the literal is scored as the model reads it, offered put right
    ranked = policy._ranked(wrong, _Scored(candidates, [-1.0] * len(candidates)))
    merged = [p for a, _, p in ranked if a == right]
    assert len(merged) == 1 and merged[0] == pytest.approx(2 / len(candidates))
