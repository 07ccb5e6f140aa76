"""Replies that are right: a guard over the policy's proposals for the two ways a learned reply goes wrong.

1. **A fact from the wrong row.** A reply or a value typed into a field (a note, an amount) that quotes a table
   (the fee of the chosen plan from a plans table, the price of the damaged item from the order's items) must
   quote it from the row the case is about. The policy copies values through slots, and which row a slot names
   is the part it gets wrong when the row's position varies from case to case. The guard finds the row the case
   is about: the one row whose key value (a word such as the plan's or the item's name) the customer names;
   failing that, the one the text names; failing that, the one the case data holds. It rewrites every value
   quoted from another row of the same table to the value of that row's column (the key too when the customer
   named the row: "the insurance charge of 29.48" becomes "the streaming charge of 74.04" when the customer
   wrote about the streaming charge). A text that names several rows (a comparison) is left as it is. A reply
   is then validated: every identifier, date and amount it states must be a value of the state (the screen,
   the panels, the chat); a reply stating one the state does not hold is replaced by the best-ranked
   alternative reply that passes, if the policy has one.
2. **A guess instead of a question.** When the proposal selects an option the customer has not named (nor
   settled in other words: ``policy.option_cues``), the value is unknown if the choice is the customer's to make
   (``policy.open_choices``: operators ask for it; learned from the traces, with the policy) or, failing that,
   if the model's own scores are split between options of that control (the operators it learned from guessed
   differently; the log-probability, before the operator's leaning weighs the options: a leaning is the guess,
   decision 0029): the guard proposes the best-ranked reply operators send to ask for it, or else the
   clarifying question the policy ranks highest (a reply ending in a question mark that names one of the
   options or the control: "Refund or a replacement?", "Which plan?", not "Could you send a photo?"), if it
   ranks one at all. An ask worded one or two words off the way operators word it ("charged more than your
   cloud" for "... your plan") is replaced by the best-ranked ask worded as they do.
3. **Closing with a request unanswered.** When the proposal closes the chat while a request of the customer's
   opening is still pending (``policy.requests``: learned from the traces, with the policy), the guard
   proposes the best-ranked reply that answers it instead, if the policy ranks one. So too while a question the
   customer asked later is open (only answers to the opening's requests came after it: operators often answer
   those first): the best-ranked reply that is neither such an answer nor a message already sent.
4. **Going on with a record that is not the customer's.** When the record a tool returned contradicts what
   the customer named (the order is for running shoes, the customer wrote about a coffee machine) and no
   operator message has queried it yet (``policy.record_check``: learned from the traces, with the policy),
   a proposal other than a reply (a click, a fill, a select, a close), or a query naming an item that is neither
   the record's nor the customer's, is replaced by the best-ranked reply that queries the record rightly, if the
   policy ranks one. This rule is checked first: with the wrong record, every later step is wrong.
5. **Acting before the customer gave what it needs.** When the proposal is an action operators take only once
   the customer has said a word (ticking "photo received" once the photo is there: ``policy.preconditions``,
   learned from the traces, with the policy) and the customer has not said it, the guard proposes the
   best-ranked reply that asks for it instead, if the policy ranks one. The other way round, a reply asking for
   what the customer has already said ("Photo of the damage please." after "I attached a photo") is replaced by
   the best-ranked candidate that does not.

The guard follows the policy interface the runtime and the sandbox use (``propose_batch``), so it wraps any
policy; it reads only the state and the policy's ranked alternatives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from policy.open_choices import OpenChoices
from policy.option_cues import OptionCues
from policy.preconditions import Preconditions
from policy.record_check import RecordCheck
from policy.requests import RequestTracker
from policy.serialise import mentioned_options
from policy.values import ENTITY_PATTERNS, recent_chat, value_sources
from policy.words import says
from schemas.actions import CloseChat, FillField, SelectOption, SendTextToChat
from schemas.proposal import Proposal, ScoredAction
from schemas.screen import ControlKind
from schemas.state import ChatRole, Panel, UIState

RULES_VERSION = 7
"""Changes whenever the guard's rules do: what a guarded policy proposes depends on it as on the policy's
version, so caches of guarded proposals (the benches' copilot feedback) are keyed by both."""

# Entity kinds a reply states as facts; short numbers ("5 working days") are the wording's own.
FACT_KINDS = frozenset({"email", "date", "id", "postcode", "amount"})
_NUMERIC = re.compile(r"^[\d.,:/ -]+$")


class Proposer(Protocol):
    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]: ...


P = TypeVar("P", bound=Proposer)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if len(w) >= 3]


def _key_columns(panel: Panel) -> list[str]:
    """Columns that tell the rows apart by a word (not a number): the plan's name, not its fee."""
    columns = sorted({c for row in panel.rows for c in row})
    out = []
    for column in columns:
        values = [row.get(column, "") for row in panel.rows]
        if all(v and not _NUMERIC.match(v) for v in values) and len(set(values)) == len(values):
            out.append(column)
    return out


def _case_values(state: UIState) -> set[str]:
    """Values the case has settled: the screen's and those of non-table panels (e.g. the case data)."""
    out = {str(v) for v in state.values.values() if v not in (None, "", True, False)}
    for panel in state.panels.values():
        out |= {v for v in panel.fields.values() if v}
    return out


def _rows_named(panel: Panel, keys: list[str], text: str) -> list[int]:
    """The rows of ``panel`` whose key value ``text`` names (as a word, any case)."""
    low = text.lower()
    return [i for i, row in enumerate(panel.rows) if any(says(low, row[k].lower()) for k in keys)]


def row_consistent(text: str, state: UIState) -> str:
    """``text`` with every value quoted from a table row other than the row the case is about replaced by the
    same column of that row. The row is the one whose key value the customer's messages name (then key values
    are replaced too); failing that, the one the text names; failing that, the one the case data holds. With no
    single such row, or when the text names several rows, the text is returned unchanged."""
    customer = " ".join(m.text for m in recent_chat(state) if m.role == ChatRole.CUSTOMER)
    for panel in state.panels.values():
        if len(panel.rows) < 2:
            continue
        keys = _key_columns(panel)
        if not keys:
            continue
        in_text = [i for i, row in enumerate(panel.rows) if any(says(text, row[k]) for k in keys)]
        if len(in_text) > 1:
            continue  # the text compares rows: nothing to decide
        named = _rows_named(panel, keys, customer)
        by_customer = len(named) == 1
        if not by_customer:
            named = in_text
        if len(named) != 1:
            settled = _case_values(state)
            named = [i for i, row in enumerate(panel.rows) if any(row[k] in settled for k in keys)]
        if len(named) != 1:
            continue
        about = panel.rows[named[0]]
        for i, row in enumerate(panel.rows):
            if i == named[0]:
                continue
            for column, value in row.items():
                right = about.get(column, "")
                quoted = value and right and value != right and says(text, value)
                if quoted and (by_customer or column not in keys):
                    text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", right, text)
    return text


def unsupported_facts(text: str, state: UIState) -> list[str]:
    """Identifiers, dates and amounts ``text`` states that no value of the state holds."""
    sources = value_sources(state)
    known = set(sources.values())
    blob = " ".join([*known, *(m.text for m in state.chat)])
    out = []
    for kind, pattern in ENTITY_PATTERNS:
        if kind not in FACT_KINDS:
            continue
        for match in pattern.finditer(text):
            fact = match.group()
            if fact not in known and fact not in blob:
                out.append(fact)
    return out


def _asks_about(question: str, options: list[str], control_words: list[str]) -> bool:
    """Whether a question is about the select: it names one of its options or a word of its id or label
    ("Which plan?" for ``new_plan``), not something else the screen still needs ("a photo of the damage?")."""
    words = _words(question)
    return bool(mentioned_options(options, words)) or any(w in words for w in control_words)


def _customer_words(state: UIState) -> list[str]:
    return sorted({w for m in state.chat if m.role == ChatRole.CUSTOMER for w in _words(m.text)})


@dataclass
class ReplyGuard:
    """Wraps a policy: ``propose_batch`` returns its proposals with replies and typed values made consistent
    with the state and guesses turned into clarifying questions (see the module docstring).

    ``alternatives``: how many ranked candidates to ask the policy for (the guard chooses among them);
    ``ask_below``: a select is a guess when its option holds less than this share of the model's own score
    (``ProposalFeatures.logprob``) over that control's options; ``min_question``: the least probability a question needs to be
    asked instead; ``requests``, ``cues``, ``record_check``, ``preconditions`` and ``choices``: the pending
    requests' reader, the options the customer's words settle, the record check, the words operators wait for
    and the choices that are the customer's (the wrapped policy's readers of the same names, see
    ``with_reply_guard``)."""

    policy: Proposer
    requests: RequestTracker | None = None
    cues: OptionCues | None = None
    record_check: RecordCheck | None = None
    preconditions: Preconditions | None = None
    choices: OpenChoices | None = None
    alternatives: int = 25
    ask_below: float = 0.75
    min_question: float = 0.02

    @property
    def version_(self) -> str:
        """The wrapped policy's version ("" if it has none): the guard is a fixed rule over its proposals, not a
        model of its own."""
        return str(getattr(self.policy, "version_", ""))

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        proposals = self.policy.propose_batch(states, k=max(k, self.alternatives))
        out: list[Proposal | None] = []
        for state, proposal in zip(states, proposals, strict=True):
            out.append(None if proposal is None else self.guard(state, proposal, k))
        return out

    def propose(self, state: UIState, k: int = 5) -> Proposal | None:
        return self.propose_batch([state], k)[0]

    def guard(self, state: UIState, proposal: Proposal, k: int = 5) -> Proposal:
        ranked = [ScoredAction(action=proposal.action, features=proposal.features), *proposal.alternatives]
        # Rules that replace the proposal with another ranked candidate, the first that applies (rule 4 first).
        for rule in (
            self._query_before_going_on,
            self._question_instead_of_guess,
            self._ask_as_operators_do,
            self._answer_before_closing,
            self._ask_before_acting,
            self._not_asking_again,
        ):
            replacement = rule(state, ranked)
            if replacement is not None:
                return self._with_top(proposal, ranked, replacement, k)
        top = ranked[0]
        if isinstance(top.action, SendTextToChat):
            fixed = self._right_reply(state, ranked)
            if fixed is not None and fixed != top:
                return self._with_top(proposal, ranked, fixed, k)
        if isinstance(top.action, FillField):
            value = row_consistent(top.action.value, state)
            if value != top.action.value:
                action = FillField(control_id=top.action.control_id, value=value)
                return self._with_top(proposal, ranked, ScoredAction(action=action, features=top.features), k)
        return self._with_top(proposal, ranked, top, k)

    def _right_reply(self, state: UIState, ranked: list[ScoredAction]) -> ScoredAction | None:
        """The top reply with its table facts from the right row, or failing validation the best alternative
        reply that passes; None if no reply passes. An ask worded as operators word it (``policy.open_choices``)
        is left as it is: "charged more than your plan" names the plan line as a kind of charge, not the row the
        customer disputes."""
        for candidate in ranked:
            if not isinstance(candidate.action, SendTextToChat):
                continue
            text = candidate.action.text
            if not (self.choices is not None and self.choices.asked_for(state, text)):
                text = row_consistent(text, state)
            if not unsupported_facts(text, state):
                if text == candidate.action.text:
                    return candidate
                return ScoredAction(action=SendTextToChat(text=text), features=candidate.features)
        return None

    def _ask_as_operators_do(self, state: UIState, ranked: list[ScoredAction]) -> ScoredAction | None:
        """The best-ranked ask worded as operators word it when the proposal asks for a select's option in other
        words ("charged more than your cloud": a slot filled from the wrong row); None otherwise."""
        top = ranked[0].action
        if self.choices is None or not isinstance(top, SendTextToChat):
            return None
        control_id = self.choices.misworded_ask(state, top.text)
        if control_id is None:
            return None
        return self._best_ask(state, ranked, self.choices, control_id)

    def _best_ask(
        self, state: UIState, ranked: list[ScoredAction], choices: OpenChoices, control_id: str
    ) -> ScoredAction | None:
        """The best-ranked alternative reply that asks for the select's option as operators word it."""
        process_id = state.process_id
        return self._best_reply(state, ranked, lambda text: choices.asks(text, process_id, control_id))

    def _answer_before_closing(self, state: UIState, ranked: list[ScoredAction]) -> ScoredAction | None:
        """When the proposal closes the chat: the best-ranked reply answering a pending request of the opening,
        or, with none pending, the best-ranked reply to an open later question (``RequestTracker.open_question``)
        that is not a request's answer nor a message already sent; None otherwise (no close, nothing open, or no
        such reply ranked)."""
        if self.requests is None or not isinstance(ranked[0].action, CloseChat):
            return None
        requests = self.requests
        pending = requests.pending(state)
        if pending:
            return self._best_reply(state, ranked, lambda text: requests.answers(text, pending))
        if requests.open_question(state) is None:
            return None
        requested = requests.requested(state)
        sent = {m.text for m in recent_chat(state) if m.role != ChatRole.CUSTOMER}
        return self._best_reply(state, ranked, lambda text: text not in sent and not requests.answers(text, requested))

    def _query_before_going_on(self, state: UIState, ranked: list[ScoredAction]) -> ScoredAction | None:
        """The best-ranked reply querying the record when the proposal goes on with a record that contradicts the
        customer and has not been queried, or queries it naming an item that is neither the record's nor the
        customer's; None otherwise (another reply proposed, nothing pending, or no right query ranked)."""
        if self.record_check is None:
            return None
        pending = self.record_check.pending(state)
        top = ranked[0].action
        if not pending or (
            isinstance(top, SendTextToChat)
            and (
                not self.record_check.looks_like_query(top.text, pending)
                or self.record_check.queried_by(top.text, state, pending)
            )
        ):
            return None
        check = self.record_check
        return self._best_reply(state, ranked, lambda text: check.queried_by(text, state, pending))

    def _ask_before_acting(self, state: UIState, ranked: list[ScoredAction]) -> ScoredAction | None:
        """The best-ranked reply asking for what the proposed action waits for when the customer has not said it;
        None otherwise (a reply proposed, nothing missing, or no asking reply ranked)."""
        top = ranked[0].action
        if self.preconditions is None or isinstance(top, SendTextToChat):
            return None
        missing = self.preconditions.unmet(state, top)
        if not missing:
            return None
        preconditions = self.preconditions
        return self._best_reply(state, ranked, lambda text: preconditions.asks_for(text, missing))

    def _not_asking_again(self, state: UIState, ranked: list[ScoredAction]) -> ScoredAction | None:
        """The best-ranked candidate that asks for nothing the customer has said when the proposal asks for
        something they have ("Photo of the damage please." after "I attached a photo"); None otherwise."""
        top = ranked[0].action
        if self.preconditions is None or not isinstance(top, SendTextToChat):
            return None
        if not self.preconditions.asked_again(state, top.text):
            return None
        for candidate in ranked[1:]:
            action = candidate.action
            if not isinstance(action, SendTextToChat):
                return candidate
            if not self.preconditions.asked_again(state, action.text):
                return self._right_reply(state, [candidate])
        return None

    def _best_reply(
        self, state: UIState, ranked: list[ScoredAction], wanted: Callable[[str], bool]
    ) -> ScoredAction | None:
        """The best-ranked alternative reply whose text ``wanted`` accepts, its facts made consistent with the
        state (``_right_reply``); None when the policy ranks none."""
        for candidate in ranked[1:]:
            action = candidate.action
            if isinstance(action, SendTextToChat) and wanted(action.text):
                return self._right_reply(state, [candidate])
        return None

    def _question_instead_of_guess(self, state: UIState, ranked: list[ScoredAction]) -> ScoredAction | None:
        top = ranked[0].action
        if not isinstance(top, SelectOption):
            return None
        control = state.screen.control(top.control_id)
        options = list(getattr(control, "options", []) or [])
        if control is None or control.kind != ControlKind.SELECT or not options:
            return None
        if mentioned_options(options, _customer_words(state)):
            return None  # the customer named an option: not a guess
        if self.cues is not None and self.cues.cued(state, top.control_id):
            return None  # the customer's words settle an option ("charged twice"): not a guess either
        if self.choices is not None and self.choices.open_choice(state, top.control_id, self.cues):
            asked = self._best_ask(state, ranked, self.choices, top.control_id)
            if asked is not None:
                return asked
        # The model's own split (its log-probability), not the probability the operator's leaning sharpened: the
        # operators it learned from guessing differently is what makes the option unknown (decision 0029).
        mass = {
            c.action.option: math.exp(c.features.logprob)
            for c in ranked
            if isinstance(c.action, SelectOption) and c.action.control_id == top.control_id
        }
        if sum(mass.values()) <= 0 or mass[top.option] / sum(mass.values()) >= self.ask_below:
            return None  # the policy is sure of the value (the tools or the chat settle it)
        about = _words(f"{control.id} {control.label}")
        for candidate in ranked:
            action = candidate.action
            if (
                isinstance(action, SendTextToChat)
                and action.text.rstrip().endswith("?")
                and candidate.features.probability >= self.min_question
                and _asks_about(action.text, options, about)
            ):
                return candidate
        return None

    @staticmethod
    def _with_top(proposal: Proposal, ranked: list[ScoredAction], top: ScoredAction, k: int) -> Proposal:
        rest = [c for c in ranked if c.action != top.action][: max(0, k - 1)]
        if top.action == proposal.action and len(proposal.alternatives) == len(rest):
            return proposal
        return proposal.model_copy(update={"action": top.action, "features": top.features, "alternatives": rest})


def with_reply_guard(policy: P, enabled: bool = True) -> P | ReplyGuard:
    """``policy`` behind a ``ReplyGuard`` (the service's and the demo's default, ``AUTOPILOT_REPLY_GUARD``), or as
    it is when ``enabled`` is false."""
    if not enabled:
        return policy
    return ReplyGuard(
        policy,
        requests=getattr(policy, "requests_", None),
        cues=getattr(policy, "cues_", None),
        record_check=getattr(policy, "record_check_", None),
        preconditions=getattr(policy, "preconditions_", None),
        choices=getattr(policy, "choices_", None),
    )
