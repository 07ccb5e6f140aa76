"""Choices that are the customer's to make: learned from the traces, so that the policy asks instead of guessing.

A refund or a replacement, which plan, which kind of dispute: when the customer has not said, some operators ask
("Refund or a replacement?") and the others guess. A guess is what operators call a model error when they review
a proposal (the customer wanted the other remedy), and it was the largest single cause of unacceptable proposals
of the default policy: in 3,000 copilot cases of the calibrated default scenario 387 of its 1,977 select
proposals were unacceptable, 342 of them options the customer had neither named nor cued, and in 156 of those
the policy was sure of its guess (three quarters of the control's probability or more), so the reply guard's
old test, a policy split between options, did not see them. The policy had learned which option the operator
it read would have guessed. Whether the customer has chosen is a fact of the chat; whether the choice is the
customer's to make is a fact of the traces: operators ask for it.

**Learning** (``fit``, after the option cues). First, per process and select control, the panel fields whose
presence settles the option (``invoice.duplicate_of``: a duplicate dispute, whatever invoice it names), counted
over the select steps as ``OptionCues`` counts a cue. Then every trace whose screen showed the control while
nothing settled it (the customer's words neither named an option, ``serialise.mentioned_options``, nor cued one,
``OptionCues.cued``, and no settling field was there) is an *open* case. In it the operator either selected
while the choice was still open (a guess) or first got the customer to settle it: the operator's last reply
before that is then an *ask*. The choice is the customer's when operators asked in at least ``min_ask_share`` of
``min_cases`` or more open cases: operators who decide it from the case do not ask. A reply is an ask for the
control when it was such a last reply in at least ``ANSWER_CASES`` cases and in at least ``min_answered`` of the
times operators sent it while the choice was open: the customer answers it with the choice ("Refund or a
replacement?"), not with something else ("Could you send a photo?"). Asks are kept as operators wrote them and
compared by their words in any order (the plans in the order a case's table lists them), not in slot form:
"charged more than your plan" names the plan line of an invoice whose lines are plan, cloud and roaming, and the
slot form would ask about the cloud line in another case.

**Reading.** ``open_choice(state, control_id)``: whether the control's choice is the customer's and nobody has
made it yet: nothing settles it, and no ask of the operator's has had an answer (a customer who answered the
retention offer in words no cue covers has still answered it); ``asks(text, process_id, control_id)``: whether a
reply asks for it; ``asked_for(state, text)`` and ``misworded_ask(state, text)``: the select on the screen a reply
asks for as operators word it, or in words one or two off.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Self

from policy.option_cues import OptionCues, settling_signs
from policy.readers import Reader, process_key
from policy.requests import ANSWER_CASES
from policy.serialise import named_or_cued
from policy.words import matches_template, words_of
from schemas.actions import SelectOption, SendTextToChat
from schemas.screen import ControlKind
from schemas.state import ChatRole, UIState
from schemas.trace import Trace


def _options(control: object) -> list[str]:
    """A control's options (none for a control that has no options, or none at all)."""
    return list(getattr(control, "options", []) or [])


def _selects(state: UIState) -> list[tuple[str, list[str]]]:
    """The state's select controls still without a value, with their options."""
    return [
        (c.id, _options(c))
        for c in state.screen.controls
        if c.kind == ControlKind.SELECT and state.values.get(c.id) in (None, "")
    ]


def filled_fields(state: UIState) -> set[str]:
    """The panels' fields that hold a value, as ``panel.field`` (``invoice.duplicate_of``): a tool's result that
    may settle a choice by being there at all, whatever its value."""
    return {
        f"{panel_id}.{name}"
        for panel_id, panel in state.panels.items()
        for name, value in panel.fields.items()
        if value
    }


@lru_cache(maxsize=8192)
def _wording(text: str) -> frozenset[str]:
    """A reply's words, as asks are compared: the same words in any order ("basic, plus or premium" in the order
    a case's plans table lists them), one word other is another ask ("more than your plan" is not "more than
    your cloud")."""
    return frozenset(words_of(text))


@dataclass
class OpenChoices(Reader):
    """Select controls whose option the customer chooses, and the replies that ask for it (see the module
    docstring). Learned: ``asks_`` maps process and control (``process\\x1fcontrol``) to the replies that ask
    for its option, as operators wrote them; a control is in it only when its choice is the customer's.
    ``settled_by_`` maps it to the panel fields whose presence settles the option (``invoice.duplicate_of``)."""

    min_cases: int = 20
    min_ask_share: float = 0.1
    min_answered: float = 0.5
    min_settle_cases: int = 8
    min_settle_precision: float = 0.9
    asks_: dict[str, list[str]] = field(default_factory=dict)
    settled_by_: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, traces: Iterable[Trace], cues: OptionCues | None = None) -> Self:
        worked = list(traces)
        self.settled_by_ = self._fields_that_settle(worked)
        open_cases: Counter[str] = Counter()
        asked_cases: Counter[str] = Counter()
        last_asks: dict[str, Counter[frozenset[str]]] = defaultdict(Counter)  # key -> wording -> cases last ask
        sent_open: dict[str, Counter[frozenset[str]]] = defaultdict(Counter)  # key -> wording -> sends while open
        texts: dict[frozenset[str], str] = {}
        for trace in worked:
            state_of: dict[str, str] = {}  # key -> "open" | "asked" | "settled" | "guessed"
            last_reply: dict[str, frozenset[str]] = {}
            for step in trace.steps:
                state, action = step.state, step.action
                reply: frozenset[str] | None = None
                if isinstance(action, SendTextToChat):
                    reply = _wording(action.text)
                    texts.setdefault(reply, action.text)
                for control_id, options in _selects(state):
                    key = process_key(trace.process_id, control_id)
                    is_chosen = self._chosen(state, control_id, options, cues)
                    if key not in state_of:
                        state_of[key] = "settled" if is_chosen else "open"
                        if not is_chosen:
                            open_cases[key] += 1
                    if state_of[key] == "open" and is_chosen:
                        state_of[key] = "asked"
                        asked_cases[key] += 1
                        if key in last_reply:
                            last_asks[key][last_reply[key]] += 1
                    if state_of[key] == "open":
                        if reply is not None:
                            last_reply[key] = reply
                            sent_open[key][reply] += 1
                        elif isinstance(action, SelectOption) and action.control_id == control_id:
                            state_of[key] = "guessed"
        asks: dict[str, list[str]] = {}
        for key, n in sorted(open_cases.items()):
            if n < self.min_cases or asked_cases[key] < self.min_ask_share * n:
                continue
            replies = sorted(
                texts[w]
                for w, c in last_asks[key].items()
                if c >= ANSWER_CASES and c >= self.min_answered * sent_open[key][w]
            )
            if replies:
                asks[key] = replies
        self.asks_ = asks
        return self

    def _fields_that_settle(self, traces: list[Trace]) -> dict[str, list[str]]:
        """Per control, the panel fields whose presence settles its option (``settling_signs``, as ``OptionCues``
        takes a cue): a field every lookup fills settles nothing."""
        steps = [
            (process_key(trace.process_id, step.action.control_id), step.action.option, filled_fields(step.state))
            for trace in traces
            for step in trace.steps
            if isinstance(step.action, SelectOption)
        ]
        by_option = settling_signs(steps, self.min_settle_cases, self.min_settle_precision)
        return {key: sorted({f for fields in options.values() for f in fields}) for key, options in by_option.items()}

    def _chosen(self, state: UIState, control_id: str, options: list[str], cues: OptionCues | None) -> bool:
        """Whether the customer's words name or cue an option of the control, or a tool's result settles it."""
        if named_or_cued(state, control_id, options, cues):
            return True
        settling = self.settled_by_.get(process_key(state.process_id, control_id), [])
        return not filled_fields(state).isdisjoint(settling)

    def open_choice(self, state: UIState, control_id: str, cues: OptionCues | None = None) -> bool:
        """Whether ``control_id``'s option is the customer's to choose and nobody has chosen it yet."""
        if process_key(state.process_id, control_id) not in self.asks_:
            return False
        options = _options(state.screen.control(control_id))
        return (
            bool(options)
            and not self._chosen(state, control_id, options, cues)
            and not self._answered(state, control_id)
        )

    def _answered(self, state: UIState, control_id: str) -> bool:
        """Whether a customer message follows an operator message that asked for the control's option."""
        asked = False
        for message in state.chat:
            if message.role == ChatRole.OPERATOR:
                asked = asked or self.asks(message.text, state.process_id, control_id)
            elif message.role == ChatRole.CUSTOMER and asked:
                return True
        return False

    def misworded_ask(self, state: UIState, text: str) -> str | None:
        """The select control (on the state's screen) that the reply ``text`` asks for in words other than
        operators use, one or two words off (``policy.words.matches_template``): "charged more than your cloud"
        for "charged more than your plan"; None when it asks for none or as operators do."""
        words = set(_wording(text))
        for control_id, _ in _selects(state):
            asks = self.asks_.get(process_key(state.process_id, control_id), [])
            if any(matches_template(words, a) for a in asks) and not self.asks(text, state.process_id, control_id):
                return control_id
        return None

    def asked_for(self, state: UIState, text: str) -> str | None:
        """The select control (on the state's screen) that the reply ``text`` asks for as operators word it."""
        for control_id, _ in _selects(state):
            if self.asks(text, state.process_id, control_id):
                return control_id
        return None

    def asks(self, text: str, process_id: str, control_id: str) -> bool:
        """Whether the reply ``text`` asks for the control's option: it has the words of a reply operators send to
        ask for it (``_wording``)."""
        wording = _wording(text)
        return any(wording == _wording(a) for a in self.asks_.get(process_key(process_id, control_id), []))
