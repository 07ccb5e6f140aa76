"""When the record a tool returned is not the one the customer means: learned from the traces.

A customer writes about their coffee machine and gives an order number; the lookup returns an order for running
shoes. Operators do not go on with that order: they say what the number is for and ask the customer to check it
("That order (ORD-472152) is your running shoes. Can you double-check the number of the coffee machine
order?"). The default policy went on instead: in the sandbox's copilot reviews of the guarded default policy
(3,000 cases) 170 of the 1,967 unacceptable proposals came where the operator asked instead, most of them a
click on ``next`` or ``check_warranty``; the LM ranked such a question among its five best in a third of
them. Whether the record contradicts what the customer said is a fact of the state, so it is checked.

**Learning** (``fit``).

- *Fields a customer names*: a panel field whose values are words (letters and spaces only) from a vocabulary
  of at most ``MAX_VALUES`` values, where the customer's messages name the value the panel shows in at least
  ``MIN_NAMED`` of the states that show it (``order.item``: customers say what their order is; a status or a
  name they do not). The record *contradicts* the customer on such a field when the customer's messages name
  one or more values of the vocabulary and none of them is the one the panel shows.
- *Queries*: the replies (slot form) operators send where the record contradicts the customer, and almost only
  there: in at least ``ANSWER_CASES`` such states and in at least ``min_precision`` of their sends. A query
  names what the customer named ("... not the coffee machine; could you double-check the number?"), which the
  slot form keeps as a literal; that value is a slot of the query's own (``NAMED``), so one wording is one
  query whichever item the customer named, and ``queries`` fills it with the customer's.
- A field is *checked* when at least ``min_cases`` cases had a state that contradicts the customer on it and
  operators sent one of its queries in at least ``min_queried`` of them.

**Reading.** ``pending``: the checked fields on which the state's record contradicts the customer and which no
operator message has queried yet, that is, no message that matches a query (``policy.words.matches_template``, as
``policy.requests`` matches answers) and states the value the panel shows now. When the customer gives another
number and the lookup runs again, the new record is checked anew. ``queries``: the query templates to offer as
candidates, with the customer's value in their ``NAMED`` slot.
Fields are learned across processes: a new process showing the same panel is checked from its first case.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

from policy.readers import Reader
from policy.requests import ANSWER_CASES
from policy.serialise import reply_template
from policy.words import WORD_VALUE, customer_said, matches_template, names, says, words_of
from schemas.actions import SendTextToChat
from schemas.state import ChatRole, UIState
from schemas.trace import Trace

MAX_VALUES = 100  # a field with more distinct values is an identifier or a text, not a vocabulary
MIN_NAMED = 0.5
NAMED = "⟪named⟫"  # a query's slot for the value the customer named (the record's own value has a panel slot)


def _field_values(state: UIState) -> Iterable[tuple[str, str]]:
    """(``panel.field``, value) of the state's panels, for values that are words."""
    for panel_id, panel in state.panels.items():
        for name, value in panel.fields.items():
            text = value.strip().lower()
            if WORD_VALUE.fullmatch(text):
                yield f"{panel_id}.{name}", text


def _generalised(reply: str, state: UIState, vocabulary: dict[str, list[str]], words: set[str]) -> str:
    """``reply`` (slot form) with the vocabulary values the customer named (``words``: the customer's), other than
    the record's, as ``NAMED``."""
    for key, known in vocabulary.items():
        shown = _value(state, key)
        for value in known:
            if value != shown and says(reply.lower(), value) and names(value, words):
                reply = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", NAMED, reply, flags=re.IGNORECASE)
    return reply


@dataclass
class RecordCheck(Reader):
    """Panel fields whose value must be what the customer names before the case goes on, with the replies
    that query it (see the module docstring). Learned: ``vocabulary_`` maps a checked field (``panel.field``)
    to its values, ``queries_`` to its query templates (slot form)."""

    min_cases: int = 8
    min_precision: float = 0.9
    min_queried: float = 0.5
    vocabulary_: dict[str, list[str]] = field(default_factory=dict)
    queries_: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, traces: Iterable[Trace]) -> Self:
        worked = [t for t in traces if t.steps]
        values: dict[str, Counter[str]] = defaultdict(Counter)
        shown: Counter[str] = Counter()
        named: Counter[str] = Counter()
        for trace in worked:
            for step in trace.steps:
                words = customer_said(step.state)
                for key, value in _field_values(step.state):
                    values[key][value] += 1
                    shown[key] += 1
                    named[key] += names(value, words)
        vocabulary = {
            key: sorted(counts)
            for key, counts in values.items()
            if len(counts) <= MAX_VALUES and len(counts) >= 2 and named[key] >= MIN_NAMED * shown[key]
        }
        sent: Counter[str] = Counter()
        in_contradiction: dict[str, Counter[str]] = defaultdict(Counter)  # field -> reply -> sends there
        cases: dict[str, list[set[str]]] = defaultdict(list)  # field -> per case: replies sent where contradicted
        for trace in worked:
            per_field: dict[str, set[str]] = {}
            for step in trace.steps:
                words = customer_said(step.state)
                reply = (
                    _generalised(reply_template(step.action, step.state), step.state, vocabulary, words)
                    if isinstance(step.action, SendTextToChat)
                    else None
                )
                if reply is not None:
                    sent[reply] += 1
                for key in _contradicted(step.state, vocabulary, words):
                    replies = per_field.setdefault(key, set())
                    if reply is not None:
                        in_contradiction[key][reply] += 1
                        replies.add(reply)
            for key, replies in per_field.items():
                cases[key].append(replies)
        self.vocabulary_, self.queries_ = {}, {}
        for key, counts in sorted(in_contradiction.items()):
            queries = sorted(
                r for r, n in counts.items() if n >= ANSWER_CASES and n >= self.min_precision * sent[r]
            )  # fmt: skip
            asked = cases[key]
            queried = sum(1 for replies in asked if replies & set(queries))
            if queries and len(asked) >= self.min_cases and queried >= self.min_queried * len(asked):
                self.vocabulary_[key] = vocabulary[key]
                self.queries_[key] = queries
        return self

    def contradicted(self, state: UIState) -> list[str]:
        """The checked fields on which the state's record contradicts what the customer named."""
        return _contradicted(state, self.vocabulary_)

    def pending(self, state: UIState) -> list[str]:
        """The contradicted fields no operator message has queried yet (one that matches a query and states the
        value the panel shows now)."""
        out = []
        said = [(m.text.lower(), words_of(m.text)) for m in state.chat if m.role != ChatRole.CUSTOMER]
        for key in self.contradicted(state):
            value = _value(state, key)
            if not any(says(text, value) and self._is_query(words, key) for text, words in said):
                out.append(key)
        return out

    def queries(self, state: UIState) -> list[str]:
        """The query templates (slot form) for the state's pending fields, with the value the customer named in
        their ``NAMED`` slot (one per value named, when they named several)."""
        out = []
        for key in self.pending(state):
            named = self._named_values(state, key)
            for template in self.queries_[key]:
                out += [template.replace(NAMED, v) for v in named] if NAMED in template else [template]
        return out

    def queried_by(self, text: str, state: UIState, fields: list[str]) -> bool:
        """Whether the reply ``text`` queries one of ``fields`` (``pending(state)``) rightly: it matches a query,
        states the value the panel shows, names the customer's value where the query does (its ``NAMED`` slot)
        and no value of the field that is neither (the bank keeps queries with the items of training cases in
        their wording)."""
        words, lowered = words_of(text), text.lower()
        for key in fields:
            if not says(lowered, _value(state, key)) or self._names_other(text, state, key):
                continue
            named = self._named_values(state, key)
            for template in self.queries_.get(key, []):
                if matches_template(words, template.replace(NAMED, " ")) and (
                    NAMED not in template or any(says(lowered, v) for v in named)
                ):
                    return True
        return False

    def looks_like_query(self, text: str, fields: list[str]) -> bool:
        """Whether ``text`` has the wording of a query of one of ``fields``, whatever values it states."""
        words = words_of(text)
        return any(self._is_query(words, key) for key in fields)

    def _named_values(self, state: UIState, key: str) -> list[str]:
        """The field's values the customer named, other than the panel's."""
        shown, customer = _value(state, key), customer_said(state)
        return [v for v in self.vocabulary_.get(key, []) if v != shown and names(v, customer)]

    def _others(self, state: UIState, key: str) -> tuple[list[str], list[str]]:
        """The field's values that are neither the record's nor one the customer named, and those the customer
        named."""
        shown, named = _value(state, key), self._named_values(state, key)
        return [v for v in self.vocabulary_.get(key, []) if v != shown and v not in named], named

    def items(self, state: UIState) -> list[tuple[list[str], list[str]]]:
        """Per checked field, ``_others``: what ``corrected`` reads."""
        return [self._others(state, key) for key in self.vocabulary_]

    def _names_other(self, text: str, state: UIState, key: str) -> bool:
        lowered = text.lower()
        return any(says(lowered, v) for v in self._others(state, key)[0])

    def _is_query(self, words: set[str], key: str) -> bool:
        return any(matches_template(words, t.replace(NAMED, " ")) for t in self.queries_.get(key, []))


def corrected(text: str, items: list[tuple[list[str], list[str]]]) -> str | None:
    """A reply with the items of another case put right (``RecordCheck.items``): a value that is neither the
    record's nor the customer's is replaced by the one the customer named. The bank keeps the items of training
    cases in the wording of its queries ("..., not the desk lamp; could you double-check the number?"), and the
    model ranked such a literal above the same query with the customer's item. None where the customer named no
    value or several (nothing to put in its place); the text itself where it names no other value."""
    for others, named in items:
        lowered = text.lower()
        stated = [v for v in others if v in lowered and says(lowered, v)]
        if not stated:
            continue
        if len(named) != 1:
            return None
        for value in stated:
            text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", named[0], text, flags=re.IGNORECASE)
    return text


def _value(state: UIState, key: str) -> str:
    panel_id, _, name = key.partition(".")
    panel = state.panels.get(panel_id)
    return (panel.fields.get(name, "") if panel is not None else "").strip().lower()


def _contradicted(state: UIState, vocabulary: dict[str, list[str]], words: set[str] | None = None) -> list[str]:
    """The fields of ``vocabulary`` on which the state's panels contradict the customer's words (``words``:
    ``customer_said(state)``, when the caller has them)."""
    if not vocabulary:
        return []
    words = customer_said(state) if words is None else words
    out = []
    for key, value in _field_values(state):
        known = vocabulary.get(key)
        if known is None or value not in known:
            continue
        if names(value, words):
            continue
        if any(names(other, words) for other in known if other != value):
            out.append(key)
    return out
