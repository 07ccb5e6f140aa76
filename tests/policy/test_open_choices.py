"""Open choices (policy.open_choices): the selects whose option is the customer's to choose, the replies that ask
for it, and the reply guard's rule that asks instead of guessing even when the policy is sure of its guess.
Hand-built traces for the rules; the sandbox's own traces for the real thing."""

from __future__ import annotations

import random
from collections.abc import Sequence

from policy.open_choices import OpenChoices
from policy.option_cues import OptionCues
from policy.policy import LMPolicy
from policy.replies import ReplyGuard
from sandbox.generate import iter_traces
from schemas import Action, ChatMessage, ChatRole, CloseChat, Panel, ScreenSchema, SelectOption, SendTextToChat, UIState
from schemas.screen import ChatControl, SelectControl
from schemas.trace import Trace, TraceSource, TraceStep
from tests.policy.scripted import Scripted

ASK = ("Refund or a replacement?", "Would you prefer a refund or a replacement?")
OPENINGS = ("My lamp arrived broken.", "My lamp arrived broken, please sort it out.")


def state(chat: Sequence[tuple[ChatRole, str]], courier: str = "fast", voucher: str = "") -> UIState:
    screen = ScreenSchema(
        screen_id="s", process_id="refund", title="S",
        controls=[
            ChatControl(id="chat", label="Chat"),
            SelectControl(id="remedy", label="Remedy", options=["refund", "replacement"]),
            SelectControl(id="claim", label="Courier claim", options=["file", "skip"]),
        ],
        resolution_codes=["resolved"],
    )  # fmt: skip
    messages = [ChatMessage(role=role, text=text) for role, text in chat]
    panels = {"order": Panel(title="Order", fields={"courier": courier, "voucher": voucher})}
    return UIState(session_id="S", case_id="C", process_id="refund", screen=screen, chat=messages, panels=panels)


def trace(n: int, rng: random.Random) -> Trace:
    """A refund case: the customer names the remedy in the opening, or does not and the operator asks (then the
    customer names it) or guesses; a paid-by-voucher order (the lookup shows its voucher code) is always
    refunded. The courier claim is the operator's to decide from the order panel: nobody asks for it."""
    remedy = rng.choice(("refund", "replacement"))
    chat: list[tuple[ChatRole, str]] = [(ChatRole.CUSTOMER, rng.choice(OPENINGS))]
    courier = rng.choice(("fast", "slow"))
    voucher = f"V-{n:04d}" if rng.random() < 0.15 else ""
    steps: list[tuple[UIState, Action]] = []
    u = rng.random()
    if voucher:
        remedy = "refund"
    elif u < 0.4:
        chat[0] = (ChatRole.CUSTOMER, f"My lamp arrived broken, I'd like a {remedy}.")
    elif u < 0.7:
        ask = rng.choice(ASK)
        steps.append((state(chat, courier, voucher), SendTextToChat(text=ask)))
        chat += [(ChatRole.OPERATOR, ask), (ChatRole.CUSTOMER, f"A {remedy} please.")]
    claim = SelectOption(control_id="claim", option="file" if courier == "slow" else "skip")
    for action in (SelectOption(control_id="remedy", option=remedy), claim, CloseChat(resolution="resolved")):
        steps.append((state(chat, courier, voucher), action))
    trace_steps = [TraceStep(step=i, state=s, action=a) for i, (s, a) in enumerate(steps)]
    return Trace(trace_id=f"T{n}", source=TraceSource.SANDBOX, case_id=f"C{n}", process_id="refund", steps=trace_steps)


def traces(n: int, seed: int = 0) -> list[Trace]:
    rng = random.Random(seed)
    return [trace(i, rng) for i in range(n)]


def test_it_learns_which_choice_is_the_customers_and_the_replies_that_ask_for_it() -> None:
    choices = OpenChoices().fit(traces(200))
    assert choices.asks_ == {"refund\x1fremedy": sorted(ASK)}  # not the courier claim: nobody asks for it
    assert choices.settled_by_ == {"refund\x1fremedy": ["order.voucher"]}  # not the courier: every order has one
    assert OpenChoices.from_dict(choices.to_dict()).asks_ == choices.asks_
    assert OpenChoices().fit(traces(15)).asks_ == {}  # too few open cases: nothing is learned rather than a guess
    assert OpenChoices(min_ask_share=0.9).fit(traces(200)).asks_ == {}  # operators ask in about half the open cases


def test_a_choice_is_open_until_the_customer_names_it_or_answers_the_ask() -> None:
    choices = OpenChoices().fit(traces(200))
    opening = (ChatRole.CUSTOMER, OPENINGS[0])
    assert choices.open_choice(state([opening]), "remedy")
    assert not choices.open_choice(state([(ChatRole.CUSTOMER, "Broken lamp, a rfund please")]), "remedy")  # a typo
    answered = [opening, (ChatRole.OPERATOR, ASK[1]), (ChatRole.CUSTOMER, "whichever is quicker")]
    assert not choices.open_choice(state(answered), "remedy")  # answered in words no cue covers: not open any more
    unanswered = [opening, (ChatRole.OPERATOR, ASK[0])]
    assert choices.open_choice(state(unanswered), "remedy")
    assert not choices.open_choice(state([opening], voucher="V-0042"), "remedy")  # the lookup settles it
    assert not choices.open_choice(state([opening]), "claim")  # the operator's to decide
    assert choices.asks("Refund or a replacement?", "refund", "remedy")
    assert not choices.asks("Could you send a photo?", "refund", "remedy")


def test_the_guard_asks_instead_of_a_guess_the_policy_is_sure_of() -> None:
    choices = OpenChoices().fit(traces(200))
    guess = SelectOption(control_id="remedy", option="refund")
    ask = SendTextToChat(text=ASK[0])
    thanks = SendTextToChat(text="Thanks, one moment.")
    ranked: list[tuple[Action, float]] = [(guess, 0.9), (thanks, 0.05), (ask, 0.01)]
    open_state = state([(ChatRole.CUSTOMER, OPENINGS[0])])
    guarded = ReplyGuard(Scripted(ranked), choices=choices).propose(open_state)
    assert guarded is not None and guarded.action == ask and guarded.alternatives[0].action == guess
    named = state([(ChatRole.CUSTOMER, "My lamp arrived broken, I'd like a refund.")])
    assert ReplyGuard(Scripted(ranked), choices=choices).propose(named).action == guess  # type: ignore[union-attr]
    # Without the reader the guard sees a policy sure of its option: no guess to its eyes.
    assert ReplyGuard(Scripted(ranked)).propose(open_state).action == guess  # type: ignore[union-attr]
    unranked = [r for r in ranked if r[0] != ask]
    assert ReplyGuard(Scripted(unranked), choices=choices).propose(open_state).action == guess  # type: ignore[union-attr]


def test_on_the_sandbox_it_flags_the_guesses_of_held_out_operators_and_not_the_choices_customers_made() -> None:
    worked = iter_traces(900, 11)
    cues = OptionCues().fit(worked[:500])
    choices = OpenChoices().fit(worked[:500], cues)
    assert {"refund_damaged\x1fremedy", "billing_dispute\x1fdispute_type"} <= set(choices.asks_)
    assert not any(key.startswith("delivery_status") for key in choices.asks_)  # its next step is the operator's
    right: dict[bool, list[bool]] = {True: [], False: []}  # flagged open -> the operator chose the case's truth
    for t in worked[500:]:
        wanted = t.ground_truth["truth"]["fields"]
        for step in t.steps:
            action = step.action
            if isinstance(action, SelectOption) and action.control_id in wanted:
                flagged = choices.open_choice(step.state, action.control_id, cues)
                right[flagged].append(action.option == wanted[action.control_id])
    # The operators' selects it flags are guesses (right about as often as chance and the operators' leanings
    # allow); those it lets through follow what the customer said.
    assert len(right[True]) >= 40 and sum(right[True]) <= 0.7 * len(right[True])
    assert len(right[False]) >= 100 and sum(right[False]) >= 0.95 * len(right[False])


def test_an_ask_worded_a_word_off_becomes_the_ask_as_operators_word_it() -> None:
    choices = OpenChoices().fit(traces(200))
    open_state = state([(ChatRole.CUSTOMER, OPENINGS[0])])
    misworded = SendTextToChat(text="Would you prefer a refund or a voucher?")  # a slot filled from the wrong row
    assert choices.misworded_ask(open_state, misworded.text) == "remedy"
    assert choices.misworded_ask(open_state, ASK[1]) is None  # as operators word it
    assert choices.misworded_ask(open_state, "Thanks, one moment.") is None  # no ask at all
    ask = SendTextToChat(text=ASK[1])
    ranked: list[tuple[Action, float]] = [(misworded, 0.6), (SelectOption(control_id="remedy", option="refund"), 0.3)]
    guarded = ReplyGuard(Scripted([*ranked, (ask, 0.1)]), choices=choices).propose(open_state)
    assert guarded is not None and guarded.action == ask
    assert ReplyGuard(Scripted(ranked), choices=choices).propose(open_state).action == misworded  # type: ignore[union-attr]


def test_an_ask_worded_as_operators_word_it_keeps_its_words() -> None:
    ask = "Was it charged more than your plan costs, or a refund you want?"
    choices = OpenChoices(asks_={"refund\x1fremedy": [ask]})
    invoice = Panel(
        title="Invoice", rows=[{"charge": "plan", "amount": "20.00"}, {"charge": "cloud", "amount": "5.00"}]
    )
    about_cloud = state([(ChatRole.CUSTOMER, "It's about the cloud charge.")]).model_copy(
        update={"panels": {"invoice": invoice}}
    )
    ranked: list[tuple[Action, float]] = [(SendTextToChat(text=ask), 0.9)]
    kept = ReplyGuard(Scripted(ranked), choices=choices).propose(about_cloud)
    assert kept is not None and kept.action == SendTextToChat(text=ask)
    # Without the reader the row rule takes "plan" for a row the reply quotes and puts the customer's in.
    rewritten = ReplyGuard(Scripted(ranked)).propose(about_cloud)
    assert rewritten is not None and "cloud" in rewritten.action.text  # type: ignore[union-attr]


def test_the_policy_scores_every_candidate_where_a_choice_is_open() -> None:
    """A policy that learned from operators who guess scores their asks far below the guess; pruned, the asks
    would never reach the guard, which could then not ask instead (decision 0029). So a state with an open
    choice is scored in full, and every other state keeps the pruning bound."""
    policy = LMPolicy()
    policy.choices_ = OpenChoices().fit(traces(200))
    opening = (ChatRole.CUSTOMER, OPENINGS[0])
    assert policy._prune_for(state([opening])) is None
    assert policy._prune_for(state([(ChatRole.CUSTOMER, "My lamp arrived broken, a refund please")])) == 9.0
    assert policy._prune_for(state([opening], voucher="V-0042")) == policy.prune_logprob  # the lookup settled it
    assert LMPolicy()._prune_for(state([opening])) == policy.prune_logprob  # no choices learned: the bound holds
