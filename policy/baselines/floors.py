"""Floor predictors: what any learned policy has to beat. Counting only, no model.

* ``MostFrequentPerScreen``: the most frequent action (in slot form) on the state's screen.
* ``SuffixNGram``: the most frequent next action after the longest suffix of the recent actions seen in training
  on the same screen (``max_n=1`` is the last-action bigram), backing off to shorter suffixes.

Both count action *texts in slot form* (``policy.serialise.action_text``), so "greet the customer by name" is one
action across customers; a text is filled back into the state being predicted with ``parse_action_text``. A
text whose slot the state lacks is skipped and the next most frequent text is tried.

Fallback order of both: the key's ranked texts, then the process's, then all processes'. The confidence of a
prediction is the training relative frequency of the chosen text *at the key* (screen, or screen + suffix);
a text taken from the process or global fallback never followed that key, so its confidence is 0.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Self, TypeVar

from policy.predictor import Prediction
from policy.serialise import ActionTextError, action_text, literal_action_text, parse_action_text
from policy.values import value_sources
from schemas.actions import Action, ActionValidationError, FillField, SendTextToChat, action_key, validate_action
from schemas.state import UIState
from schemas.trace import Trace

START = "<start>"
"""The history token that marks the start of the case (``SuffixNGram(start_token=True)``): it begins a history
that is known to be complete (as many recent actions as the state's step number), so a case's opening differs
from the same actions seen mid-case."""

REFERENCE_MAX_N = 6
"""The longest suffix of the reference n-gram floor (``docs/data.md``): ``SuffixNGram(max_n=6)``
reproduces its test-split numbers (BPI 2013 incidents 0.5578 = 0.5578; BPI 2012 W 0.6608 against 0.6610, three
test prefixes whose training counts tie: the reference breaks ties by first occurrence, this class by text
order), while longer suffixes score lower there (max_n=16: 0.5527 / 0.6510) and shorter ones too (max_n=3:
0.5578 / 0.6593)."""

_VALUE_VERBS = ("send ", "fill ")
_POOLED = "*"  # the process and screen of the pooled (every process's) suffix table
K = TypeVar("K", bound=Hashable)
Ranked = tuple[tuple[str, float], ...]
"""Texts with their relative frequencies, most frequent first; ties in text order."""


def _rank(counts: Mapping[str, int]) -> Ranked:
    total = sum(counts.values())
    return tuple((text, n / total) for text, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _rank_all(table: Mapping[K, Counter[str]]) -> dict[K, Ranked]:
    return {key: _rank(counts) for key, counts in table.items()}


class _Fallbacks:
    """Counts of the per-process and global fallbacks."""

    def __init__(self) -> None:
        self.process: dict[str, Counter[str]] = defaultdict(Counter)
        self.all: Counter[str] = Counter()

    def add(self, process_id: str, text: str) -> None:
        self.process[process_id][text] += 1
        self.all[text] += 1


def _choices(state: UIState, levels: Sequence[Ranked], valid_only: bool = False) -> Iterator[tuple[Action, float, int]]:
    """(action, relative frequency, level) of every text (level by level, rank by rank) that parses in
    ``state`` (and, with ``valid_only``, is valid on its screen), each text once: the first one is the
    prediction."""
    sources: dict[str, str] | None = None
    tried: set[str] = set()
    for level, ranked in enumerate(levels):
        for text, freq in ranked:
            if text in tried:
                continue
            tried.add(text)
            if sources is None and text.startswith(_VALUE_VERBS):
                sources = value_sources(state)  # once per state, and only for texts that can hold slots
            try:
                action = parse_action_text(text, state, sources)
                if valid_only:
                    validate_action(action, state.screen)
            except (ActionTextError, ActionValidationError):
                continue
            yield action, freq, level


def _choose(state: UIState, levels: Sequence[Ranked], *, valid_only: bool = False) -> Prediction | None:
    """The first text (level by level, rank by rank) that parses in ``state``. ``levels[0]`` is the matched
    key's ranking: a text chosen there has its frequency as confidence; a text from a later level never followed
    the key (or it would have been tried at level 0), so its confidence is 0."""
    for action, freq, level in _choices(state, levels, valid_only):
        return Prediction(action=action, confidence=freq if level == 0 else 0.0)
    return None


def _ranked_choices(
    state: UIState, levels: Sequence[Ranked], k: int, *, valid_only: bool = False
) -> list[tuple[Action, float]]:
    """The ``k`` most frequent actions of the first level that has a text parsing in ``state``, with their
    relative frequencies at that level (a distribution over what followed the matched key; the texts that do
    not fill into the state are left out, so it may sum to less than one)."""
    out: list[tuple[Action, float]] = []
    first_level: int | None = None
    for action, freq, level in _choices(state, levels, valid_only):
        if first_level is None:
            first_level = level
        if level != first_level or len(out) >= k:
            break
        out.append((action, freq))
    return out


class _SlotTexts:
    """``action_text(action, state)``, memoised on what it depends on: the action and the sources of the state
    whose values occur in the action's value (a slot can only replace a substring equal to a source's value).
    The same past action is in the history of many consecutive states, and building the slot form (a regular
    expression over every source) costs far more than the lookup. The value sources of the last state asked
    about are kept too, as a history is written for one state at a time."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._state: UIState | None = None
        self._sources: dict[str, str] = {}

    def __call__(self, action: Action, state: UIState) -> str:
        if isinstance(action, FillField):
            value = action.value
        elif isinstance(action, SendTextToChat):
            value = action.text
        else:
            return literal_action_text(action)  # no value, nothing to slot
        if state is not self._state:
            self._state, self._sources = state, value_sources(state)
        squeezed = " ".join(value.split())
        relevant = tuple((n, v) for n, v in self._sources.items() if v in value or v in squeezed)
        key = (action_key(action), relevant)
        text = self._memo.get(key)
        if text is None:
            # only the relevant sources: the same slot form, from a much smaller pattern (none at all when no
            # source occurs in the value)
            text = self._memo[key] = action_text(action, state, dict(relevant))
        return text


def _steps(traces: Sequence[Trace]) -> Iterable[tuple[UIState, Action]]:
    for trace in traces:
        for step in trace.steps:
            yield step.state, step.action


def _screen_key(state: UIState) -> tuple[str, str]:
    return state.process_id, state.screen.screen_id


class MostFrequentPerScreen:
    """The most frequent action text per (process, screen).

    Learned: ``ranked_`` (screen key -> ranked texts), ``process_ranked_`` (process -> ranked texts),
    ``global_ranked_``.
    """

    name = "most_frequent_per_screen"

    def __init__(self) -> None:
        self.ranked_: dict[tuple[str, str], Ranked] = {}
        self.process_ranked_: dict[str, Ranked] = {}
        self.global_ranked_: Ranked = ()

    def fit(self, traces: Sequence[Trace]) -> Self:
        table: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        fallbacks = _Fallbacks()
        slot_texts = _SlotTexts()
        for state, action in _steps(traces):
            text = slot_texts(action, state)
            table[_screen_key(state)][text] += 1
            fallbacks.add(state.process_id, text)
        if not fallbacks.all:
            raise ValueError("no training steps: the traces are empty")
        self.ranked_ = _rank_all(table)
        self.process_ranked_ = _rank_all(fallbacks.process)
        self.global_ranked_ = _rank(fallbacks.all)
        return self

    def predict(self, states: Sequence[UIState]) -> list[Prediction]:
        if not self.global_ranked_:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        out: list[Prediction] = []
        for state in states:
            ranked = self.ranked_.get(_screen_key(state), ())
            levels = (ranked, self.process_ranked_.get(state.process_id, ()), self.global_ranked_)
            out.append(_predicted(state, levels))
        return out


def _predicted(state: UIState, levels: Sequence[Ranked]) -> Prediction:
    prediction = _choose(state, levels)
    if prediction is None:  # every text seen in training names a slot this state lacks
        raise ValueError(f"no training action fills into state {state.etag} (screen {state.screen.screen_id!r})")
    return prediction


class SuffixNGram:
    """Longest-suffix n-gram over the recent actions, per (process, screen).

    The context of a state is its screen key and the action texts of ``state.recent_actions`` in slot form
    *relative to the current state* (``action_text(past_action, state)``: a past value that the state still shows
    becomes the same slot in every case). The longest suffix of at most ``max_n`` texts that was seen in training
    on that screen picks the prediction (its most frequent next text that fills into the state; ties in text
    order); shorter suffixes are tried next, down to the empty suffix (the per-screen most frequent action), then
    the process and global fallbacks.

    ``max_n=1`` is the last-action bigram; the default ``REFERENCE_MAX_N`` reproduces the reference n-gram floor
    of the event logs. A state carries only the history its producer kept (16 actions for the importers by
    default, 8 in the sandbox), so ``max_n`` beyond that changes nothing.

    ``start_token=True`` prepends ``START`` to a history known to be complete (its length equals ``state.step``
    and is below ``max_n``), so the opening of a case is told apart from the same actions mid-case. That is
    still a function of the prefix, and a much stronger floor on BPI 2013 incidents (0.70 instead of 0.56: its
    cases open with a repeated first activity); the classic floor (the README's) is ``start_token=False``.

    ``pooled=True`` also counts every non-empty suffix over all processes and screens together, and tries that
    pooled ranking right after the screen's own at each suffix length (keeping only texts valid on the screen):
    a prior from the other processes for the contexts a new process has not shown yet (the same lookup, greeting
    or reply after the same actions). A mature process's contexts are its own, so it rarely changes anything
    there.

    Learned: ``table_`` ((process, screen, suffix) -> ranked texts), ``process_ranked_``, ``global_ranked_``.
    """

    def __init__(self, max_n: int = REFERENCE_MAX_N, *, start_token: bool = False, pooled: bool = False) -> None:
        if max_n < 0:
            raise ValueError(f"max_n must be >= 0, got {max_n}")
        self.max_n = max_n
        self.start_token = start_token
        self.pooled = pooled
        self.name = (
            ("bigram" if max_n == 1 else f"suffix_ngram_{max_n}")
            + ("_start" if start_token else "")
            + ("_pooled" if pooled else "")
        )
        self.table_: dict[tuple[str, str, tuple[str, ...]], Ranked] = {}
        self.process_ranked_: dict[str, Ranked] = {}
        self.global_ranked_: Ranked = ()

    def _history(self, state: UIState, slot_texts: _SlotTexts) -> tuple[str, ...]:
        recent = state.recent_actions[-self.max_n :] if self.max_n > 0 else []
        texts = [slot_texts(past, state) for past in recent]
        if self.start_token and len(recent) < self.max_n and len(state.recent_actions) == state.step:
            texts.insert(0, START)
        return tuple(texts)

    def fit(self, traces: Sequence[Trace]) -> Self:
        table: dict[tuple[str, str, tuple[str, ...]], Counter[str]] = defaultdict(Counter)
        fallbacks = _Fallbacks()
        slot_texts = _SlotTexts()
        for state, action in _steps(traces):
            text = slot_texts(action, state)
            process_id, screen_id = _screen_key(state)
            history = self._history(state, slot_texts)
            for n in range(min(self.max_n, len(history)) + 1):
                table[process_id, screen_id, history[len(history) - n :]][text] += 1
                if self.pooled and n > 0:
                    table[_POOLED, _POOLED, history[len(history) - n :]][text] += 1
            fallbacks.add(process_id, text)
        if not fallbacks.all:
            raise ValueError("no training steps: the traces are empty")
        self.table_ = _rank_all(table)
        self.process_ranked_ = _rank_all(fallbacks.process)
        self.global_ranked_ = _rank(fallbacks.all)
        return self

    def _levels(self, state: UIState, slot_texts: _SlotTexts) -> Iterator[tuple[Ranked, bool]]:
        """The rankings to try, longest suffix first: at each length the screen's own, then (``pooled``) every
        process's and screen's after the same suffix, whose texts must also be valid on this screen."""
        process_id, screen_id = _screen_key(state)
        history = self._history(state, slot_texts)
        for n in range(min(self.max_n, len(history)), -1, -1):
            suffix = history[len(history) - n :]
            ranked = self.table_.get((process_id, screen_id, suffix))
            if ranked is not None:
                yield ranked, False
            if self.pooled and n > 0 and (pooled := self.table_.get((_POOLED, _POOLED, suffix))) is not None:
                yield pooled, True

    def predict(self, states: Sequence[UIState]) -> list[Prediction]:
        if not self.global_ranked_:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        slot_texts = _SlotTexts()
        return [self._predict_one(state, slot_texts) for state in states]

    def _predict_one(self, state: UIState, slot_texts: _SlotTexts) -> Prediction:
        for ranked, check in self._levels(state, slot_texts):
            prediction = _choose(state, (ranked,), valid_only=check)
            if prediction is not None:
                return prediction
        levels = ((), self.process_ranked_.get(state.process_id, ()), self.global_ranked_)
        return _predicted(state, levels)

    def rank(self, states: Sequence[UIState], k: int = 5) -> list[list[tuple[Action, float]]]:
        """Per state the ``k`` most frequent next actions after the longest matched suffix that has one filling
        into the state, with their relative frequencies there (the process or global fallback when no suffix
        matches); ``predict``'s action is the first."""
        if not self.global_ranked_:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        slot_texts = _SlotTexts()
        out: list[list[tuple[Action, float]]] = []
        for state in states:
            ranked_here: list[tuple[Action, float]] = []
            for ranked, check in self._levels(state, slot_texts):
                if ranked_here := _ranked_choices(state, (ranked,), k, valid_only=check):
                    break
            if not ranked_here:
                levels = (self.process_ranked_.get(state.process_id, ()), self.global_ranked_)
                ranked_here = _ranked_choices(state, levels, k)
            out.append(ranked_here)
        return out
