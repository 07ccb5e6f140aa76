"""Customer words as the learned readers take them (``policy.requests``, ``policy.option_cues``, ``policy.record_check``,
``policy.preconditions``): lower-case words, typos allowed the way operators read them, rare misspellings folded onto
the word they misspell; and whether a message says what a reply template says."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher
from functools import lru_cache

from policy.slots import SLOT
from schemas.state import ChatMessage, ChatRole, UIState

MIN_CUE_WORD = 4  # shorter words ("the", "and", "my") name nothing a case turns on
MATCH_SHARE = 0.8  # a message says what a reply template says when it holds this share of the template's words
WORD_VALUE = re.compile(r"[a-z][a-z ]{2,39}")  # a value made of words (an item, a charge), not an id or a text


def words_of(text: str, min_len: int = 3) -> set[str]:
    """The words of ``text`` (lower case, ``min_len`` letters or more, no bare numbers)."""
    return {w for w in re.split(r"[^a-z0-9]+", text.lower()) if len(w) >= min_len and not w.isdigit()}


def says(text: str, value: str) -> bool:
    """Whether ``text`` states ``value`` as words of its own, not inside another word ("ORD-1" is not in
    "ORD-12"); the caller lower-cases both where case does not matter."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


def customer_words_in(messages: Iterable[ChatMessage], min_len: int = 3) -> set[str]:
    """The words of the customer's messages among ``messages`` (``words_of``)."""
    return {w for m in messages if m.role == ChatRole.CUSTOMER for w in words_of(m.text, min_len)}


def customer_said(state: UIState, min_len: int = 3) -> set[str]:
    """The words of every customer message of the state (``words_of``)."""
    return customer_words_in(state.chat, min_len)


def word_matches(word: str, words: Sequence[str]) -> bool:
    """Whether one of ``words`` is ``word``, allowing typos from four letters on (at least 80% similar)."""
    return any(word == c or (len(word) >= 4 and SequenceMatcher(None, word, c).ratio() >= 0.8) for c in words)


@lru_cache(maxsize=65536)
def similar(word: str, other: str) -> bool:
    """``other`` is ``word`` or, from five letters on, a typo of it (``word_matches``) one letter longer or
    shorter at most: "look" is not "looked", "does" not "doesn't". Cached: the readers ask it for the same
    word pairs on every proposal (a ``SequenceMatcher`` each, ~90 a guarded proposal)."""
    return word == other or (len(word) >= 5 and abs(len(word) - len(other)) <= 1 and word_matches(word, [other]))


def names(value: str, words: set[str]) -> bool:
    """Whether ``words`` (a customer's) name ``value``: each of its words is one of them, typos allowed
    (``similar``)."""
    parts = words_of(value)
    return bool(parts) and all(any(similar(p, w) for w in words) for p in parts)


def typo_folding(counts: Counter[str], rare: int = 3, common: int = 10) -> dict[str, str]:
    """Rare words mapped to the common word they are a typo of ("cnotract" -> "contract"), so that a word is
    counted in every case that holds it, as the readers match it (``similar``)."""
    frequent = [w for w, n in counts.most_common() if n >= common]
    out = {}
    for word, n in counts.items():
        if n <= rare:
            match = next((f for f in frequent if similar(word, f)), None)
            if match is not None:
                out[word] = match
    return out


@lru_cache(maxsize=8192)
def template_words(template: str) -> frozenset[str]:
    """The words of a reply template (slot form), its slots left out: their values differ from case to case."""
    return frozenset(words_of(SLOT.sub(" ", template)))


def matches_template(words: set[str], template: str) -> bool:
    """Whether a message with these words says what ``template`` says: it holds at least ``MATCH_SHARE`` of the
    template's words (slots left out)."""
    return holds_words(words, template_words(template))


def holds_words(words: set[str], wanted: frozenset[str]) -> bool:
    """Whether a message with ``words`` holds at least ``MATCH_SHARE`` of a template's words ``wanted``."""
    return bool(wanted) and len(wanted & words) >= MATCH_SHARE * len(wanted)
