"""Preconditions (policy.preconditions): the customer words operators wait for before an action, the replies that
ask for them, and the reply guard's rule against acting before the customer gave what the action needs.
Hand-built traces for the rules; the sandbox's own traces for the real thing."""

from __future__ import annotations

import random
from collections.abc import Sequence

from policy.preconditions import Preconditions, action_name
from policy.replies import ReplyGuard
from policy.serialise import SerialConfig, serialise_state
from sandbox.generate import iter_traces
from schemas import Action, ChatMessage, ChatRole, CloseChat, ScreenSchema, SendTextToChat, ToggleCheckbox, UIState
from schemas.screen import ChatControl, CheckboxControl
from schemas.trace import Trace, TraceSource, TraceStep
from tests.policy.scripted import Scripted

ASK = ("Please attach a photo of the damage.", "Could you send a photo of the damage?")
TICK = ToggleCheckbox(control_id="photo_received", checked=True)


def state(chat: Sequence[tuple[ChatRole, str]]) -> UIState:
    screen = ScreenSchema(
        screen_id="s", process_id="refund", title="S",
        controls=[ChatControl(id="chat", label="Chat"), CheckboxControl(id="photo_received", label="Photo received")],
        resolution_codes=["resolved"],
    )  # fmt: skip
    messages = [ChatMessage(role=role, text=text) for role, text in chat]
    return UIState(session_id="S", case_id="C", process_id="refund", screen=screen, chat=messages)


def trace(n: int, rng: random.Random) -> Trace:
    """A refund case: the customer sends the photo with the opening or after the operator asks for it; the
    operator ticks "photo received" once it is there."""
    chat: list[tuple[ChatRole, str]] = [(ChatRole.CUSTOMER, "My lamp arrived broken.")]
    steps: list[tuple[UIState, Action]] = []
    if rng.random() < 0.5:
        chat[0] = (ChatRole.CUSTOMER, "My lamp arrived broken, photo attached.")
    else:
        ask = rng.choice(ASK)
        steps.append((state(chat), SendTextToChat(text=ask)))
        reply = "sent the phtoo" if n % 50 == 1 else "here's the photo"  # a rare typo, folded onto the word
        chat += [(ChatRole.OPERATOR, ask), (ChatRole.CUSTOMER, reply)]
    steps.append((state(chat), TICK))
    steps.append((state(chat), CloseChat(resolution="resolved")))
    trace_steps = [TraceStep(step=i, state=s, action=a) for i, (s, a) in enumerate(steps)]
    return Trace(trace_id=f"T{n}", source=TraceSource.SANDBOX, case_id=f"C{n}", process_id="refund", steps=trace_steps)


def traces(n: int, seed: int = 0) -> list[Trace]:
    rng = random.Random(seed)
    return [trace(i, rng) for i in range(n)]


def test_it_learns_the_word_an_action_waits_for_and_the_replies_that_ask_for_it() -> None:
    check = Preconditions().fit(traces(200))
    key = f"refund\x1f{action_name(TICK)}"
    assert check.needs_[key] == ["photo"]  # not "broken" (every case says it), not the lamp
    assert check.asks_["photo"] == sorted(ASK)
    assert Preconditions.from_dict(check.to_dict()).needs_ == check.needs_
    assert Preconditions().fit(traces(10)).needs_ == {}  # too few cases: nothing is learned rather than a guess


def test_an_unmet_precondition_is_read_from_the_chat_typos_allowed() -> None:
    check = Preconditions().fit(traces(200))
    assert check.unmet(state([(ChatRole.CUSTOMER, "My lamp arrived broken.")]), TICK) == ["photo"]
    assert check.unmet(state([(ChatRole.CUSTOMER, "My lamp arrived broken, see the phtoo")]), TICK) == []
    assert check.unmet(state([(ChatRole.CUSTOMER, "My lamp arrived broken.")]), CloseChat(resolution="resolved")) == [
        "photo"
    ]
    assert check.asks_for("Please attach a photo of the damage.", ["photo"])
    assert not check.asks_for("Thanks for the photo.", ["photo"])


def test_the_prompt_marks_a_checkbox_the_customer_gave_what_it_needs_for() -> None:
    check = Preconditions().fit(traces(200))
    waiting = state([(ChatRole.CUSTOMER, "My lamp arrived broken.")])
    given = state([(ChatRole.CUSTOMER, "My lamp arrived broken, photo attached.")])
    assert check.met(given, TICK) and not check.met(waiting, TICK)
    assert not check.met(given, CloseChat(resolution="other"))  # an action with no precondition is not "met"
    assert "photo_received:checkbox ~on" in serialise_state(given, SerialConfig(), preconditions=check)
    assert "~on" not in serialise_state(waiting, SerialConfig(), preconditions=check)
    ticked = given.model_copy(update={"values": {"photo_received": True}})
    assert "~on" not in serialise_state(ticked, SerialConfig(), preconditions=check)  # done: nothing to point at
    assert "~on" not in serialise_state(given, SerialConfig.from_dict({}), preconditions=check)  # a model saved before


def test_the_guard_asks_for_what_the_action_waits_for() -> None:
    check = Preconditions().fit(traces(200))
    ask = SendTextToChat(text=ASK[0])
    thanks = SendTextToChat(text="Thanks, one moment.")
    ranked: list[tuple[Action, float]] = [(TICK, 0.7), (thanks, 0.2), (ask, 0.1)]
    before = state([(ChatRole.CUSTOMER, "My lamp arrived broken.")])
    guarded = ReplyGuard(Scripted(ranked), preconditions=check).propose(before)
    assert guarded is not None and guarded.action == ask and guarded.alternatives[0].action == TICK
    after = state([(ChatRole.CUSTOMER, "My lamp arrived broken, photo attached.")])
    assert ReplyGuard(Scripted(ranked), preconditions=check).propose(after).action == TICK  # type: ignore[union-attr]
    assert ReplyGuard(Scripted(ranked)).propose(before).action == TICK  # type: ignore[union-attr]
    unranked = [r for r in ranked if r[0] != ask]
    assert ReplyGuard(Scripted(unranked), preconditions=check).propose(before).action == TICK  # type: ignore[union-attr]


def test_on_the_sandbox_it_learns_the_photo_and_held_out_operators_never_act_without_it() -> None:
    worked = iter_traces(500, 11)
    check = Preconditions(min_cases=10).fit(worked[:400])
    assert any(key.startswith("refund_damaged\x1ftoggle_checkbox:photo_received") for key in check.needs_)
    assert check.asks_.get("photo")
    acted = [s for t in worked[400:] for s in t.steps if not isinstance(s.action, SendTextToChat)]
    unmet = [s for s in acted if check.unmet(s.state, s.action)]
    assert len(acted) > 500 and len(unmet) <= 0.01 * len(acted)


def test_the_guard_does_not_ask_for_what_the_customer_already_gave() -> None:
    check = Preconditions().fit(traces(200))
    ask, other_ask = SendTextToChat(text=ASK[0]), SendTextToChat(text=ASK[1])
    ranked: list[tuple[Action, float]] = [(ask, 0.5), (other_ask, 0.3), (TICK, 0.2)]
    given = state([(ChatRole.CUSTOMER, "My lamp arrived broken, phtoo attached.")])  # a typo of the word
    assert check.asked_again(given, ASK[0]) == ["photo"]
    guarded = ReplyGuard(Scripted(ranked), preconditions=check).propose(given)
    assert guarded is not None and guarded.action == TICK  # not the other wording of the same ask either
    missing = state([(ChatRole.CUSTOMER, "My lamp arrived broken.")])
    assert check.asked_again(missing, ASK[0]) == []
    assert ReplyGuard(Scripted(ranked), preconditions=check).propose(missing).action == ask  # type: ignore[union-attr]
