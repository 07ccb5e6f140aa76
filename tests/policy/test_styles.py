"""Operator styles (policy.styles): the latent styles learned from which reply wordings operators send, how a
state's chat is read, and the prompt's ``style`` line. Hand-built traces for the rules; the sandbox's traces
for the real thing (its operators have four styles, each with a wording of its own)."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import numpy as np
import pytest

from policy.candidates import Candidate
from policy.option_cues import OptionCues
from policy.policy import LMPolicy, _Scored
from policy.readers import process_key
from policy.serialise import SerialConfig, serialise_state
from policy.styles import OperatorStyles, _case_shares
from sandbox.generate import iter_traces
from schemas import (
    Action,
    ChatMessage,
    ChatRole,
    CloseChat,
    Panel,
    ScreenSchema,
    SelectOption,
    SendTextToChat,
    UIState,
)
from schemas.actions import action_key
from schemas.screen import ChatControl
from schemas.trace import Trace, TraceSource, TraceStep

# Two operators' wordings of the same three replies (greeting, answer, goodbye), in two processes.
WORDINGS = {
    "plain": ("Hello {name}.", "Your order ships this week.", "Bye for now."),
    "warm": ("Hi there {name}, lovely to hear from you!", "Good news: it leaves us in a few days.", "Take care!"),
}


def state(process: str, chat: list[tuple[ChatRole, str]]) -> UIState:
    screen = ScreenSchema(
        screen_id="s", process_id=process, title="S", controls=[ChatControl(id="chat", label="Chat")],
        resolution_codes=["resolved"],
    )  # fmt: skip
    panel = Panel(title="Customer", fields={"name": "Ann Lee"})
    messages = [ChatMessage(role=role, text=text) for role, text in chat]
    return UIState(
        session_id="S", case_id="C", process_id=process, screen=screen, chat=messages, panels={"customer": panel}
    )


def trace(n: int, style: str, process: str, rng: random.Random) -> Trace:
    """One case worked in ``style``: the greeting half of the time, the answer, sometimes the goodbye."""
    greeting, answer, goodbye = WORDINGS[style]
    replies = [greeting.format(name="Ann")] if rng.random() < 0.5 else []
    replies.append(answer)
    if rng.random() < 0.7:
        replies.append(goodbye)
    actions: list[Action] = [*(SendTextToChat(text=r) for r in replies), CloseChat(resolution="resolved")]
    chat: list[tuple[ChatRole, str]] = [(ChatRole.CUSTOMER, "When does my order ship?")]
    steps = []
    for i, action in enumerate(actions):
        steps.append(TraceStep(step=i, state=state(process, chat), action=action))
        if isinstance(action, SendTextToChat):
            chat = [*chat, (ChatRole.OPERATOR, action.text)]
    return Trace(trace_id=f"T{n}", source=TraceSource.SANDBOX, case_id=f"C{n}", process_id=process, steps=steps)


def traces(n: int, styles: tuple[str, ...] = ("plain", "warm"), seed: int = 0) -> list[Trace]:
    rng = random.Random(seed)
    return [trace(i, rng.choice(styles), rng.choice(("billing", "orders")), rng) for i in range(n)]


def test_two_wordings_are_two_styles_and_a_reply_names_its_operators_style() -> None:
    styles = OperatorStyles().fit(traces(200))
    assert len(styles.weights_) == 2
    plain = styles.style(state("billing", [(ChatRole.CUSTOMER, "Hi"), (ChatRole.OPERATOR, "Hello Bob.")]))
    warm = styles.style(state("orders", [(ChatRole.OPERATOR, "Good news: it leaves us in a few days.")]))
    assert plain is not None and warm is not None and plain != warm
    # Another of the same operator's replies names the same style.
    assert styles.style(state("orders", [(ChatRole.OPERATOR, "Your order ships this week.")])) == plain
    # Before the operator wrote, and after a message no template says, no style is named.
    assert styles.style(state("billing", [(ChatRole.CUSTOMER, "Hello Bob.")])) is None
    assert styles.style(state("billing", [(ChatRole.OPERATOR, "Let me check.")])) is None
    assert OperatorStyles.from_dict(styles.to_dict()).presence_ == styles.presence_


def test_the_operators_wording_of_a_reply_weighs_more_once_they_wrote() -> None:
    styles = OperatorStyles().fit(traces(200))
    plain_answer, warm_answer = (f"send {WORDINGS[w][1]}" for w in ("plain", "warm"))
    before = styles.habit_weights(state("billing", [(ChatRole.CUSTOMER, "When does my order ship?")]))
    assert before[plain_answer] == pytest.approx(0.0) and before[warm_answer] == pytest.approx(0.0)
    after = styles.habit_weights(state("billing", [(ChatRole.OPERATOR, "Hello Bob.")]))
    assert after[plain_answer] > math.log(1.5) and after[warm_answer] < math.log(0.2)


def test_the_policy_ranks_the_operators_wording_of_a_reply_first() -> None:
    """Two wordings the LM scores alike: the one of the operator's style ranks first, the other's probability
    falls; the replies keep the probability the LM gave them together, and closes keep their scores."""
    policy = LMPolicy()
    policy.styles_ = OperatorStyles().fit(traces(200))
    s = state("orders", [(ChatRole.CUSTOMER, "When?"), (ChatRole.OPERATOR, "Hi there Bob, lovely to hear from you!")])
    plain, warm = (SendTextToChat(text=WORDINGS[w][1]) for w in ("plain", "warm"))
    close = CloseChat(resolution="resolved")
    candidates = [Candidate(f"send {a.text}", a) for a in (plain, warm)] + [Candidate("close resolved", close)]
    ranked = policy._ranked(s, _Scored(candidates, [-1.0, -1.0, -1.0]))
    assert [a for a, _, _ in ranked][:2] == [warm, close]
    assert dict((action_key(a), lp) for a, lp, _ in ranked)[action_key(close)] == -1.0
    probability = {action_key(a): p for a, _, p in ranked}
    assert probability[action_key(plain)] + probability[action_key(warm)] == pytest.approx(2 / 3)
    assert probability[action_key(close)] == pytest.approx(1 / 3)
    policy.serial = SerialConfig(operator_style=False)  # a model without the style: the LM's scores as they are
    assert [p for _, _, p in policy._ranked(s, _Scored(candidates, [-1.0, -1.0, -1.0]))] == pytest.approx([1 / 3] * 3)


LEANING = {"plain": "refund", "warm": "replacement"}  # the remedy each style picks where the customer leaves it open


def leaning_trace(n: int, style: str, rng: random.Random) -> Trace:
    """A case in which the operator greets in their words, picks the remedy their style leans to (nine times in
    ten) and closes."""
    greeting = WORDINGS[style][0].format(name="Ann")
    other = next(o for s, o in LEANING.items() if s != style)
    remedy = LEANING[style] if rng.random() < 0.9 else other
    chat: list[tuple[ChatRole, str]] = [(ChatRole.CUSTOMER, "My parcel arrived broken.")]
    greeted = [*chat, (ChatRole.OPERATOR, greeting)]
    actions: list[tuple[list[tuple[ChatRole, str]], Action]] = [
        (chat, SendTextToChat(text=greeting)),
        (greeted, SelectOption(control_id="remedy", option=remedy)),
        (greeted, CloseChat(resolution="resolved")),
    ]
    steps = [TraceStep(step=i, state=state("orders", c), action=a) for i, (c, a) in enumerate(actions)]
    return Trace(trace_id=f"T{n}", source=TraceSource.SANDBOX, case_id=f"C{n}", process_id="orders", steps=steps)


def test_the_options_of_a_select_are_weighed_by_the_operators_leaning_within_the_selects_probability() -> None:
    """Once the operator's words show their style, the option that style leans to ranks first; the select's
    options keep the probability the LM gave them together, and other actions keep theirs. Where the customer's
    words settle the option (an option cue), the leaning is not weighed and the settled option gets at least the
    cues' precision of the select's probability, and the log-probability stays the model's own (decision 0027)."""
    rng = random.Random(0)
    policy = LMPolicy()
    policy.styles_ = OperatorStyles().fit([leaning_trace(i, rng.choice(("plain", "warm")), rng) for i in range(200)])
    refund, replacement = (SelectOption(control_id="remedy", option=o) for o in ("refund", "replacement"))
    close = CloseChat(resolution="resolved")
    candidates = [Candidate(f"select remedy = {a.option}", a) for a in (refund, replacement)]
    candidates.append(Candidate("close resolved", close))
    warm = state(
        "orders", [(ChatRole.CUSTOMER, "It broke."), (ChatRole.OPERATOR, "Hi there Bob, lovely to hear from you!")]
    )
    ranked = policy._ranked(warm, _Scored(candidates, [-1.0, -1.0, -1.0]))
    assert [a for a, _, _ in ranked][:2] == [replacement, close]
    probability = {action_key(a): p for a, _, p in ranked}
    assert probability[action_key(replacement)] > 0.5
    assert probability[action_key(refund)] + probability[action_key(replacement)] == pytest.approx(2 / 3)
    assert probability[action_key(close)] == pytest.approx(1 / 3)
    # The log-probability stays the model's own, so the critic sees where the leaning, not the LM, decided.
    assert [lp for _, lp, _ in ranked] == [-1.0, -1.0, -1.0]

    policy.cues_ = OptionCues(cues_={process_key("orders", "remedy"): {"refund": ["refund"]}})
    asked = state(
        "orders",
        [(ChatRole.CUSTOMER, "I want a refund."), (ChatRole.OPERATOR, "Hi there Bob, lovely to hear from you!")],
    )
    probability = {action_key(a): p for a, _, p in policy._ranked(asked, _Scored(candidates, [-1.0, -1.0, -1.0]))}
    assert probability[action_key(refund)] == pytest.approx(policy.cues_.min_precision * 2 / 3)
    assert probability[action_key(close)] == pytest.approx(1 / 3)
    # A settled option the LM already ranks above the cues' precision keeps its own probability.
    probability = {action_key(a): p for a, _, p in policy._ranked(asked, _Scored(candidates, [-0.1, -5.0, -1.0]))}
    share = math.exp(-0.1) / (math.exp(-0.1) + math.exp(-5.0))
    assert probability[action_key(refund)] / (
        probability[action_key(refund)] + probability[action_key(replacement)]
    ) == pytest.approx(share)


def wish_or_leaning_trace(n: int, operator: str, style: str, rng: random.Random) -> Trace:
    """A case in which half the customers ask for a remedy (either, whatever the operator's style) and the operator
    gives it; where the customer leaves it open, the operator picks their style's leaning nine times in ten."""
    greeting = WORDINGS[style][0].format(name="Ann")
    wish = rng.choice(sorted(LEANING.values())) if rng.random() < 0.5 else None
    other = next(o for s, o in LEANING.items() if s != style)
    remedy = wish or (LEANING[style] if rng.random() < 0.9 else other)
    opening = f"My parcel arrived broken, a {wish} please." if wish else "My parcel arrived broken."
    chat: list[tuple[ChatRole, str]] = [(ChatRole.CUSTOMER, opening)]
    greeted = [*chat, (ChatRole.OPERATOR, greeting)]
    actions: list[tuple[list[tuple[ChatRole, str]], Action]] = [
        (chat, SendTextToChat(text=greeting)),
        (greeted, SelectOption(control_id="remedy", option=remedy)),
        (greeted, CloseChat(resolution="resolved")),
    ]
    steps = [
        TraceStep(step=i, state=state("orders", c), action=a, operator_id=operator) for i, (c, a) in enumerate(actions)
    ]
    return Trace(trace_id=f"T{n}", source=TraceSource.SANDBOX, case_id=f"C{n}", process_id="orders", steps=steps)


def test_a_leaning_is_learned_from_the_choices_the_customer_left_open() -> None:
    """Where half the customers name the remedy, a select that gives them what they asked for shows their wish,
    not the operator's leaning: counted as a habit it blurs the leaning (decision 0029). Learned from the open
    choices alone, the operator's greeting weighs their leaning up by more, and a select in the history whose
    option the customer named is no evidence of the style."""
    rng = random.Random(0)
    operators = {f"op{i}": ("plain", "warm")[i % 2] for i in range(6)}
    cases = [
        wish_or_leaning_trace(n, o, operators[o], rng) for n, o in enumerate(rng.choices(sorted(operators), k=300))
    ]
    warm = state(
        "orders", [(ChatRole.CUSTOMER, "It broke."), (ChatRole.OPERATOR, "Hi there Bob, lovely to hear from you!")]
    )
    refund, replacement = "select remedy = refund", "select remedy = replacement"

    def leaning(styles: OperatorStyles) -> float:
        weights = styles.habit_weights(warm)
        return weights[replacement] - weights[refund]

    open_only = OperatorStyles().fit(cases)
    every_select = OperatorStyles(open_choices=False).fit(cases)
    assert leaning(open_only) > 2.0 and leaning(open_only) > leaning(every_select) + 1.0
    # A saved model from before the field was fitted on every select, and keeps reading them so.
    assert OperatorStyles.from_dict({k: v for k, v in every_select.to_dict().items() if k != "open_choices"}) == (
        every_select
    )
    # The customer asked for the refund and got it: the select says nothing of the operator's style.
    asked = state("orders", [(ChatRole.CUSTOMER, "A refund please.")]).model_copy(
        update={"recent_actions": [SelectOption(control_id="remedy", option="refund")]}
    )
    assert set(open_only.habit_weights(asked).values()) == {0.0}
    left_open = asked.model_copy(update={"chat": [ChatMessage(role=ChatRole.CUSTOMER, text="It broke.")]})
    assert open_only.habit_weights(left_open)[refund] > 0.5  # the same select with the choice open: a leaning


def one_reply_trace(n: int, operator: str, style: str, rng: random.Random) -> Trace:
    """A case in which the operator sends one reply of their style (any of its three) and closes."""
    reply = rng.choice(WORDINGS[style]).format(name="Ann")
    chat: list[tuple[ChatRole, str]] = [(ChatRole.CUSTOMER, "When does my order ship?")]
    steps = [
        TraceStep(step=0, state=state("orders", chat), action=SendTextToChat(text=reply), operator_id=operator),
        TraceStep(
            step=1,
            state=state("orders", [*chat, (ChatRole.OPERATOR, reply)]),
            action=CloseChat(resolution="resolved"),
            operator_id=operator,
        ),
    ]
    return Trace(trace_id=f"T{n}", source=TraceSource.SANDBOX, case_id=f"C{n}", process_id="orders", steps=steps)


def test_an_operators_cases_together_show_the_style_that_one_case_does_not() -> None:
    """Each case holds a single reply: no case shows two habits together, so the cases alone cannot tell a
    style from a reply. The traces name their operators (six, three per wording): their cases together show
    two styles, and a greeting then weighs the answer and goodbye of its wording up, the other wording's down."""
    rng = random.Random(0)
    operators = {f"op{i}": ("plain", "warm")[i % 2] for i in range(6)}
    cases = [one_reply_trace(n, o, operators[o], rng) for n, o in enumerate(rng.choices(sorted(operators), k=300))]
    greeted = state("orders", [(ChatRole.OPERATOR, "Hello Bob.")])
    plain_answer, warm_answer = (f"send {WORDINGS[w][1]}" for w in ("plain", "warm"))
    by_operator = OperatorStyles().fit(cases)
    assert len(by_operator.weights_) == 2 and by_operator.style(greeted) is not None
    weights = by_operator.habit_weights(greeted)
    assert weights[plain_answer] > math.log(1.5) and weights[warm_answer] < math.log(0.2)
    for case in cases:  # the same cases without their operators
        for step in case.steps:
            step.operator_id = None
    weights = OperatorStyles().fit(cases).habit_weights(greeted)
    assert weights.get(plain_answer, 0.0) < math.log(1.5)


def test_a_wording_is_one_habit_whichever_values_fill_it() -> None:
    """The warm operators' answer names the order from the order panel, and in a few cases (too few to be a habit
    in their own slot form) from a claim panel: pooled, the two slot forms are one habit, and a candidate in the
    rare form is weighed as the wording it is."""
    rng = random.Random(1)
    cases = traces(200)
    for n, case in enumerate(cases):
        if case.steps[-2].action.text != WORDINGS["warm"][1]:  # type: ignore[union-attr]
            continue
        panel = ("order", "claim")[n % 8 == 0]
        for step in case.steps:
            step.state.panels[panel] = Panel(title=panel, fields={"code": f"ORD-{rng.randrange(10**6):06d}"})
            if isinstance(step.action, SendTextToChat) and step.action.text == WORDINGS["warm"][1]:
                step.action = SendTextToChat(text=f"Good news: {step.state.panels[panel].fields['code']} leaves soon.")
    greeted = state("orders", [(ChatRole.OPERATOR, "Hi there Bob, lovely to hear from you!")])
    claim = "send Good news: ⟦panel.claim.code⟧ leaves soon."
    pooled = OperatorStyles().fit(cases)
    assert pooled.habit(claim) == pooled.habit("send Good news: ⟦panel.order.code⟧ leaves soon.") in pooled.templates_
    assert pooled.habit_weights(greeted)[pooled.habit(claim)] > math.log(1.5)
    by_form = OperatorStyles(pooled_slots=False).fit(cases)  # as readers saved before pooled them
    assert claim not in by_form.templates_ and by_form.habit(claim) == claim
    assert (
        OperatorStyles.from_dict({k: v for k, v in pooled.to_dict().items() if k != "pooled_slots"}).habit(claim)
        == claim
    )


def test_one_wording_shows_no_style_and_the_line_is_never_written() -> None:
    styles = OperatorStyles().fit(traces(200, styles=("plain",)))
    assert styles.weights_ == []
    assert styles.style(state("billing", [(ChatRole.OPERATOR, "Hello Bob.")])) is None
    assert OperatorStyles().fit(traces(3)).weights_ == []  # too few cases: no template is kept


def test_the_prompt_writes_the_style_only_where_the_config_asks_for_it() -> None:
    styles = OperatorStyles().fit(traces(200))
    s = state("billing", [(ChatRole.CUSTOMER, "Hi"), (ChatRole.OPERATOR, "Hi there Bob, lovely to hear from you!")])
    assert f"\nstyle {styles.style(s)}\n" in serialise_state(s, SerialConfig(), styles=styles)
    assert "style" not in serialise_state(s, SerialConfig(operator_style=False), styles=styles)
    assert "style" not in serialise_state(s, SerialConfig.from_dict({}), styles=styles)  # a model saved before


def test_on_the_sandbox_the_styles_are_its_operators_wordings() -> None:
    """The sandbox's 12 operators have four styles (operator i has style i mod 4). Fitted on 600 cases, a style
    read at a step of other cases tells the sandbox style of the operator working it (purity), and each of the
    four sandbox styles is told by some style read."""
    styles = OperatorStyles().fit(iter_traces(600, seed=3))
    assert 4 <= len(styles.weights_) <= styles.max_styles
    read: dict[int, Counter[int]] = defaultdict(Counter)  # style read -> sandbox style of the operator -> steps
    for t in iter_traces(120, seed=4):
        for step in t.steps:
            style = styles.style(step.state)
            if style is not None:
                read[style][int(t.attributes["operator_id"][2:]) % 4] += 1
    told = {counts.most_common(1)[0][0] for counts in read.values()}
    purity = sum(counts.most_common(1)[0][1] for counts in read.values()) / sum(sum(c.values()) for c in read.values())
    assert purity > 0.85 and told == {0, 1, 2, 3}
    # The options operators select are evidence of the style, and weighed as its leaning (decision 0027).
    assert any(h.startswith("select ") for h in styles.templates_)
    weights = styles.habit_weights(step.state)
    assert {h.split(" ")[0] for h in weights} == {"send", "select"}


def test_a_new_cases_prior_is_the_styles_share_of_the_cases_whatever_the_grouping() -> None:
    """An operator's 30 cases weigh 30 times a case of its own; a group without counted cases weighs nothing (the
    prior of a held-out case without an operator is the same as the fitted reader's ``weights_``)."""
    resp = np.array([[1.0, 0.0], [0.0, 1.0], [np.nan, np.nan]])  # an operator, a lone case, a group not counted
    shares = _case_shares(resp, np.array([30, 1, 0]))
    assert shares == pytest.approx([(30 + 1) / (31 + 2), (1 + 1) / (31 + 2)])
