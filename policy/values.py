"""Value sources: the strings a UI state offers to copy, and the slot form of texts and field values.

Operators mostly type what the screen already shows: the customer's name from the record, an order number the
customer wrote in the chat, the plan they picked a moment ago. A value is therefore written to the model in
*slot form*: every substring that equals a named source of the state is replaced by ``⟦source⟧``
(``Thanks, ⟦panel.customer.name⟧.``). The model learns which source to copy, which carries over to every other
customer; filling the slots from the current state gives the literal value back.

Sources, in priority order (the first source with a given value names it):

* ``screen.<control>``: the screen's current non-empty values;
* ``panel.<panel>.<field>``: read-only panel fields (lookup results, the customer record, the clipboard);
* ``row.<panel>.named.<column>``: cells of the one row of a table the customer names (``policy.rows``), ahead of
  ``last`` and the numbered rows: a refund copies the price of the item the customer named, whichever line;
* ``row.<panel>.last.<column>``: cells of the last row of a table of two or more rows, ahead of the numbered
  rows: tables of events (a parcel's scans, a case's history) are read from their latest row, and a table's
  length varies from case to case, so "the latest scan" is one slot, not one per table length;
* ``row.<panel>.<i>.<column>``: cells of the first ``MAX_ROWS`` rows of a panel table;
* ``panel.<panel>.<field>.first``: the first word of a multi-word capitalised field (a first name);
* ``chat.<kind>[.<n>]``: entities in the customer's messages (e-mail addresses, dates, ids, postcodes, amounts,
  street addresses, numbers, capitalised names: a word capitalised only because it begins a sentence, "Order" or
  "Hello", is not a name), ``n`` counting back from the latest occurrence (omitted for the latest);
* ``chat.part.<i>``: comma-separated parts of the latest customer message.

Truncation rule: only the last ``CHAT_WINDOW`` chat messages are read (here and for the prompt's option hints in
``policy.serialise``), so the work per state is bounded whatever the chat's length: a value a customer wrote more
than ``CHAT_WINDOW`` messages ago is no longer offered as a source. Sandbox and imported chats stay far below it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from policy.rows import named_row
from policy.slots import SLOT, SLOT_CLOSE, SLOT_OPEN
from policy.words import customer_words_in
from schemas.state import ChatMessage, ChatRole, UIState

MAX_ROWS = 5
MIN_SOURCE_CHARS = 3  # shorter values ("on", "1") would be replaced inside unrelated words and numbers
MAX_OCCURRENCES = 3
CHAT_WINDOW = 32  # chat messages read per state (see the truncation rule above)

# Entity kinds looked for in customer messages; the first matching kind claims a span.
ENTITY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("date", re.compile(r"\b\d{4}-\d{2}-\d{2}\b")),
    ("id", re.compile(r"\b[A-Z]{2,5}-\d{3,}\b")),
    ("postcode", re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}\b")),
    ("amount", re.compile(r"\b\d+\.\d{2}\b")),
    ("street", re.compile(r"\b\d{1,4}(?: [A-Z][a-z]+){1,3}\b")),
    ("number", re.compile(r"\b\d{2,}\b")),
    ("proper", re.compile(r"\b[A-Z][a-z]{2,}(?: [A-Z][a-z]{2,})*\b")),
)
_MASKED_KINDS = frozenset({"email", "date", "id", "postcode", "street"})
_MASK = re.compile(
    "|".join(f"(?P<{kind}>{pattern.pattern})" for kind, pattern in ENTITY_PATTERNS if kind in _MASKED_KINDS)
    + r"|(?P<number>\b\d{5,}\b)|(?P<code>\b[A-Z]{1,5}\d+-\d{3,}\b)"
)
_PART_SPLIT = re.compile(r"\s*[,;]\s*|\s+and\s+")


def _sentence_initial(text: str, start: int) -> bool:
    """Whether ``text[start:]`` begins a sentence: nothing but spaces and quotes before it since the text's start or
    a full stop, question or exclamation mark, or a line break."""
    before = text[:start].rstrip(" \t\"'(")
    return not before or before[-1] in ".!?\n"


def _entities(text: str) -> list[tuple[str, str]]:
    """(kind, value) pairs in text order; a span claimed by an earlier kind is not matched again."""
    # One flag per character: the overlap test costs the span's length, not the number of spans claimed so far
    # (a long message full of entities would otherwise cost quadratic time).
    claimed = bytearray(len(text))
    found: list[tuple[int, str, str]] = []
    for kind, pattern in ENTITY_PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if kind == "proper" and _sentence_initial(text, start):
                # "Order ORD-1.", "Hello Anna": the first word is capitalised as a sentence's first word, not as a
                # name; copying it would turn "Order ORD-1 is on its way" into a slot that fills with "Btw".
                first = text.find(" ", start, end)
                if first < 0:
                    continue
                start = first + 1
            if any(claimed[start:end]):
                continue
            claimed[start:end] = b"\x01" * (end - start)
            found.append((start, kind, text[start:end]))
    return [(kind, value) for _, kind, value in sorted(found)]


def recent_chat(state: UIState) -> list[ChatMessage]:
    """The chat messages the policy reads: the last ``CHAT_WINDOW``."""
    return state.chat[-CHAT_WINDOW:]


def said_by_customer(state: UIState, min_len: int = 3) -> set[str]:
    """The words of the customer's messages among those the policy reads (``recent_chat``; ``words_of``)."""
    return customer_words_in(recent_chat(state), min_len)


def mask_entities(text: str) -> str:
    """``text`` with identifiers replaced by their kind (``#id``, ``#date``...); amounts and names are kept."""
    return _MASK.sub(lambda m: f"#{m.lastgroup}", text)


def value_sources(state: UIState) -> dict[str, str]:
    """Named copyable values of a state, in priority order (dict order). Deterministic for equal states."""
    sources: dict[str, str] = {}

    def add(name: str, value: object) -> None:
        text = str(value).strip() if value is not None else ""
        if text and SLOT_OPEN not in text and SLOT_CLOSE not in text:
            sources.setdefault(name, text)

    for control_id, value in sorted(state.values.items()):
        if isinstance(value, bool):
            continue
        add(f"screen.{control_id}", value)
    said: set[str] | None = None  # the customer's words, read once and only for a state with a table
    for panel_id, panel in sorted(state.panels.items()):
        for field, value in sorted(panel.fields.items()):
            add(f"panel.{panel_id}.{field}", value)
            words = value.split()
            if len(words) > 1 and words[0].isalpha() and words[0][0].isupper():
                add(f"panel.{panel_id}.{field}.first", words[0])  # "Hana Smith" is greeted as "Hana"
        if len(panel.rows) > 1:
            said = said_by_customer(state) if said is None else said
            named = named_row(panel.rows[:MAX_ROWS], said)
            if named is not None:
                for column, value in sorted(panel.rows[named].items()):
                    add(f"row.{panel_id}.named.{column}", value)
            for column, value in sorted(panel.rows[-1].items()):
                add(f"row.{panel_id}.last.{column}", value)
        for i, row in enumerate(panel.rows[:MAX_ROWS]):
            for column, value in sorted(row.items()):
                add(f"row.{panel_id}.{i}.{column}", value)
    customer = [m.text for m in recent_chat(state) if m.role == ChatRole.CUSTOMER]
    seen: dict[str, int] = {}
    for text in reversed(customer):
        if len(seen) == len(ENTITY_PATTERNS) and min(seen.values()) >= MAX_OCCURRENCES:
            break  # every kind has all its occurrences: older messages could add nothing
        for kind, value in reversed(_entities(text)):
            n = seen.get(kind, 0)
            if n < MAX_OCCURRENCES:
                add(f"chat.{kind}" if n == 0 else f"chat.{kind}.{n}", value)
                seen[kind] = n + 1
    if customer:
        parts = [p.strip(" .!?") for p in _PART_SPLIT.split(customer[-1])]
        for i, part in enumerate(p for p in parts if p):
            add(f"chat.part.{i}", part)
    return sources


@lru_cache(maxsize=4096)
def _alternation(values: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(rf"(?<!\w){re.escape(v)}(?!\w)" for v in values))


def to_slots(text: str, sources: Mapping[str, str]) -> str:
    """Replace every occurrence of a source value in ``text`` by its slot, longest values first, whole words
    only. The first source (in priority order) with a given value names it."""
    by_value: dict[str, str] = {}
    for name, value in sources.items():
        # A plain substring test first: most sources do not occur in a given text, and the regular expression
        # is then built (and cached) over the few that do.
        if len(value) >= MIN_SOURCE_CHARS and value in text:
            by_value.setdefault(value, name)
    if not by_value:
        return text
    pattern = _alternation(tuple(sorted(by_value, key=lambda v: (-len(v), v))))
    return pattern.sub(lambda m: f"{SLOT_OPEN}{by_value[m.group()]}{SLOT_CLOSE}", text)


class UnfilledSlot(LookupError):
    """A slot names a source the state does not have."""


def fill_slots(text: str, sources: Mapping[str, str]) -> str:
    """The literal value of a slot-form text in a state; raises UnfilledSlot for a source the state lacks."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in sources:
            raise UnfilledSlot(name)
        return sources[name]

    return SLOT.sub(replace, text)
