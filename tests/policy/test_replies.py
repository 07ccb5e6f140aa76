"""The reply guard (policy.replies) on hand-built states: facts from the right table row, unsupported facts
refused, and a clarifying question instead of a guess. A scripted proposer stands in for the LM (a pure unit
test of the guard's own logic)."""

from __future__ import annotations

import math

from policy.replies import ReplyGuard, row_consistent, unsupported_facts, with_reply_guard
from schemas import (
    Action,
    ChatMessage,
    ChatRole,
    ClickControl,
    FillField,
    Panel,
    ScreenSchema,
    SelectOption,
    SendTextToChat,
    UIState,
)
from schemas.screen import ButtonControl, ChatControl, SelectControl
from tests.policy.scripted import Scripted

PLANS = Panel(
    title="Plans",
    fields={"current_plan": "basic", "effective_from": "2027-03-01"},
    rows=[
        {"plan": "plus", "monthly_fee": "19.99"},
        {"plan": "premium", "monthly_fee": "34.99"},
        {"plan": "family", "monthly_fee": "44.99"},
    ],
)


def state(chat: list[str], panels: dict[str, Panel] | None = None) -> UIState:
    screen = ScreenSchema(
        screen_id="s",
        process_id="p",
        title="S",
        controls=[
            ChatControl(id="chat", label="Chat"),
            SelectControl(id="remedy", label="Remedy", options=["refund", "replacement"]),
            ButtonControl(id="next", label="Next", submits=True),
        ],
    )
    messages = [ChatMessage(role=ChatRole.CUSTOMER if i % 2 == 0 else ChatRole.OPERATOR, text=t) for i, t in
                enumerate(chat)]  # fmt: skip
    return UIState(session_id="S", case_id="C", process_id="p", screen=screen, chat=messages, panels=panels or {})


def test_a_fee_quoted_from_another_row_is_replaced_by_the_named_row() -> None:
    s = state(["I want premium"], {"plans": PLANS})
    wrong = "Your plan has been changed to premium at 19.99 a month from 2027-03-01."
    assert row_consistent(wrong, s) == "Your plan has been changed to premium at 34.99 a month from 2027-03-01."
    right = "Done: you're on premium (34.99 a month) from 2027-03-01."
    assert row_consistent(right, s) == right
    # The text names another row than the customer did: the customer's row, its name included.
    assert row_consistent("Done: you're on family (44.99 a month).", s) == "Done: you're on premium (34.99 a month)."
    # The customer names no row: the row the text names decides.
    s_no_name = state(["please change my plan"], {"plans": PLANS})
    assert row_consistent("Done: family at 19.99 a month.", s_no_name) == "Done: family at 44.99 a month."
    # No plan named in the text: the row the case data settles (the case panel's new plan) decides.
    case = Panel(title="Case data", fields={"new_plan": "family", "effective_date": "2027-03-01"})
    s2 = state(["hi"], {"plans": PLANS, "case": case})
    assert row_consistent("It usually takes effect on 2027-03-01, at 19.99 a month.", s2).endswith("44.99 a month.")
    # Two rows named: nothing to decide.
    assert row_consistent("plus or premium at 19.99?", s) == "plus or premium at 19.99?"


INVOICE = Panel(
    title="Invoice",
    fields={"invoice_id": "INV-874015", "amount": "137.06"},
    rows=[
        {"charge": "insurance", "amount": "29.48"},
        {"charge": "plan", "amount": "33.54"},
        {"charge": "streaming", "amount": "74.04"},
    ],
)


def test_a_typed_value_quotes_the_row_the_customer_named() -> None:
    s = state(["Something is off with my invoice. It's about the Streaming charge."], {"invoice": INVOICE})
    note = FillField(control_id="note", value="Customer disputes the insurance charge of 29.48 on INV-874015.")
    amount = FillField(control_id="refund_amount", value="33.54")
    for wrong, right in [
        (note, "Customer disputes the streaming charge of 74.04 on INV-874015."),
        (amount, "74.04"),
    ]:
        proposal = ReplyGuard(Scripted([(wrong, 0.7), (ClickControl(control_id="next"), 0.3)])).propose(s)
        assert proposal is not None and proposal.action == FillField(control_id=wrong.control_id, value=right)
        assert proposal.features.probability == 0.7  # the policy's own confidence in the value it typed
    # The customer names two rows: the text's own row decides, and a value of the right row stays as it is.
    both = state(["the streaming charge and the insurance charge are both wrong"], {"invoice": INVOICE})
    assert row_consistent(note.value, both) == note.value
    # A text comparing rows is left as it is.
    comparison = "insurance 29.48 and streaming 74.04"
    assert row_consistent(comparison, s) == comparison


def test_facts_the_state_does_not_hold_are_reported() -> None:
    s = state(["My order is ORD-123456"], {"order": Panel(title="Order", fields={"price": "42.50"})})
    assert unsupported_facts("Order ORD-123456: refund of 42.50 within 5 working days.", s) == []
    assert unsupported_facts("Order ORD-654321: refund of 42.50.", s) == ["ORD-654321"]
    assert unsupported_facts("A refund of 99.99 was issued on 2026-01-01.", s) == ["2026-01-01", "99.99"]


def test_the_guard_fixes_the_top_reply_and_falls_back_to_a_valid_alternative() -> None:
    s = state(["I want premium"], {"plans": PLANS})
    wrong_row = SendTextToChat(text="Your plan has been changed to premium at 19.99 a month.")
    guard = ReplyGuard(Scripted([(wrong_row, 0.6), (ClickControl(control_id="next"), 0.4)]))
    proposal = guard.propose(s)
    assert proposal is not None and isinstance(proposal.action, SendTextToChat)
    assert "34.99" in proposal.action.text and proposal.features.probability == 0.6
    invented = SendTextToChat(text="Your refund for ORD-999999 is on its way.")
    valid = SendTextToChat(text="Your plan has been changed to premium at 34.99 a month.")
    guard = ReplyGuard(Scripted([(invented, 0.5), (valid, 0.3), (ClickControl(control_id="next"), 0.2)]))
    fallback = guard.propose(s)
    assert fallback is not None and fallback.action == valid and fallback.features.probability == 0.3
    assert all(a.action != valid for a in fallback.alternatives)


def test_a_split_guess_becomes_the_clarifying_question() -> None:
    ask = SendTextToChat(text="Would you prefer a refund or a replacement?")
    ranked: list[tuple[Action, float]] = [
        (SelectOption(control_id="remedy", option="refund"), 0.45),
        (SelectOption(control_id="remedy", option="replacement"), 0.35),
        (ask, 0.15),
        (ClickControl(control_id="next"), 0.05),
    ]
    unclear = state(["my lamp arrived broken, sort it out"])
    proposer = Scripted(ranked)
    guarded = ReplyGuard(proposer).propose(unclear)
    assert guarded is not None and guarded.action == ask
    assert proposer.asked_for == [25]  # the guard reads 25 ranked candidates (an ask is often ranked 10th-25th)
    # The customer named an option: selecting it is no guess.
    clear = state(["my lamp arrived broken, I'd like a refund"])
    assert ReplyGuard(Scripted(ranked)).propose(clear).action == ranked[0][0]  # type: ignore[union-attr]
    # The policy is sure of the value (say a tool settled it): no question.
    sure: list[tuple[Action, float]] = [(ranked[0][0], 0.85), (ranked[1][0], 0.05), (ask, 0.1)]
    assert ReplyGuard(Scripted(sure)).propose(unclear).action == sure[0][0]  # type: ignore[union-attr]
    # The operator's leaning made the policy sure, the model's own scores are split: still a guess (decision 0029).
    leaning = Scripted(sure, logprobs=[math.log(0.45), math.log(0.35), math.log(0.1)])
    assert ReplyGuard(leaning).propose(unclear).action == ask  # type: ignore[union-attr]
    # A question about something else the screen needs is no clarification of the remedy: the guess stays.
    photo = SendTextToChat(text="Could you send me a photo of the damage, please?")
    other_question = [(photo, 0.15) if a == ask else (a, p) for a, p in ranked]
    assert ReplyGuard(Scripted(other_question)).propose(unclear).action == ranked[0][0]  # type: ignore[union-attr]
    # No question ranked: the guess stays (nothing better to propose).
    no_question = [r for r in ranked if r[0] != ask]
    assert ReplyGuard(Scripted(no_question)).propose(unclear).action == ranked[0][0]  # type: ignore[union-attr]


def test_the_service_runs_the_guard_by_default_and_can_turn_it_off() -> None:
    from service.runtime.settings import RuntimeSettings

    proposer = Scripted([(ClickControl(control_id="next"), 1.0)])
    proposer.version_ = "lm-1"  # type: ignore[attr-defined]
    guarded = with_reply_guard(proposer)
    assert isinstance(guarded, ReplyGuard) and guarded.version_ == "lm-1"  # the critic's policy version is the LM's
    assert with_reply_guard(proposer, enabled=False) is proposer
    assert RuntimeSettings().reply_guard is True
    assert RuntimeSettings(reply_guard=False).reply_guard is False
