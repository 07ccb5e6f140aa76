"""What the customer must have said before operators take an action: learned from the traces.

Operators tick "photo received" only once the customer has sent the photo; until then they ask for it ("Photo of
the damage please."). The default policy ticked it anyway in 37 of the 1,195 copilot reviews of that checkbox
(3,000 cases of the calibrated default scenario) where no customer message mentioned a photo, and 34 of those
were unacceptable; with 7.6% of its proposals unacceptable that checkbox could not certify and stopped 8.4% of
the background sessions (bench/results/runtime_default.md, decision 0015). Whether the customer has said it is a
fact of the chat, so it is checked.

**Learning** (``fit``). For every action of the traces other than a reply (type and target, with the option or
the checked state: ``toggle_checkbox:photo_received=True``), per process: a customer word (five letters or more,
so that typos are recognised: ``policy.words.similar``; rare misspellings folded) is a *precondition* when the
customer's messages held it in at least ``min_precision`` of the action's ``min_cases`` or more steps, and in at
most ``max_share`` of the process's steps (a word every customer writes tells nothing). A reply *asks* for the
word when it names it and operators sent it (slot form) almost only while the customer had not said it yet:
in at least ``ANSWER_CASES`` such states and ``min_ask_precision`` of its sends.

**Reading.** ``unmet(state, action)``: the action's preconditions the customer's messages do not hold (typos
allowed); ``asks_for(text, words)``: whether a reply asks for one of them; ``asked_again(state, text)``: the
words a reply asks for that the customer has already said ("Photo of the damage please." after "I attached a
photo": operators send an ask before the word is said, by construction of the asks, almost always).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

from policy.readers import Reader, process_key
from policy.requests import ANSWER_CASES
from policy.serialise import reply_template
from policy.words import customer_said, matches_template, similar, typo_folding, words_of
from schemas.actions import Action, SelectOption, SendTextToChat, ToggleCheckbox, action_target
from schemas.state import UIState
from schemas.trace import Trace

MIN_WORD = 5  # shorter words cannot be told from their typos ("date", "dtae")


def action_name(action: Action) -> str:
    """An action as preconditions are kept for it: type and target, with the option or the checked state."""
    name = f"{action.type}:{action_target(action)}"
    if isinstance(action, ToggleCheckbox):
        return f"{name}={action.checked}"
    if isinstance(action, SelectOption):
        return f"{name}={action.option}"
    return name


def _holds(word: str, words: Iterable[str]) -> bool:
    return any(similar(word, w) for w in words)


@dataclass
class Preconditions(Reader):
    """Customer words operators wait for before an action, and the replies that ask for them (see the module
    docstring). Learned: ``needs_`` maps process and action (``process\\x1fname``) to its precondition words,
    ``asks_`` maps a word to the reply templates (slot form) that ask for it."""

    min_cases: int = 20
    min_precision: float = 0.97
    max_share: float = 0.9
    min_ask_precision: float = 0.9
    needs_: dict[str, list[str]] = field(default_factory=dict)
    asks_: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, traces: Iterable[Trace]) -> Self:
        worked = [t for t in traces if t.steps]
        said = [[customer_said(step.state, MIN_WORD) for step in t.steps] for t in worked]
        folded = typo_folding(Counter(w for steps in said for words in steps for w in words))
        steps: list[tuple[str, str, set[str], Action, UIState]] = []
        for trace, per_step in zip(worked, said, strict=True):
            for step, words in zip(trace.steps, per_step, strict=True):
                words = {folded.get(w, w) for w in words}
                steps.append((trace.process_id, action_name(step.action), words, step.action, step.state))
        in_process: dict[str, Counter[str]] = defaultdict(Counter)
        process_steps: Counter[str] = Counter()
        taken: Counter[str] = Counter()
        with_word: dict[str, Counter[str]] = defaultdict(Counter)
        for process, name, words, action, _ in steps:
            in_process[process].update(words)
            process_steps[process] += 1
            if isinstance(action, SendTextToChat):
                continue
            key = process_key(process, name)
            taken[key] += 1
            with_word[key].update(words)
        needs: dict[str, list[str]] = {}
        for key, n in sorted(taken.items()):
            process = key.split("\x1f", 1)[0]
            needed = sorted(
                w
                for w, c in with_word[key].items()
                if n >= self.min_cases
                and c >= self.min_precision * n
                and in_process[process][w] <= self.max_share * process_steps[process]
            )
            if needed:
                needs[key] = needed
        wanted = {w for needed in needs.values() for w in needed}
        sent: Counter[str] = Counter()
        before: dict[str, Counter[str]] = defaultdict(Counter)  # word -> reply -> sends before the customer said it
        for _, _, words, action, state in steps:
            if not isinstance(action, SendTextToChat):
                continue
            reply = reply_template(action, state)
            sent[reply] += 1
            named = words_of(action.text, MIN_WORD)
            for word in wanted:
                if word not in words and _holds(word, named):
                    before[word][reply] += 1
        self.needs_ = needs
        self.asks_ = {
            word: sorted(r for r, c in replies.items() if c >= ANSWER_CASES and c >= self.min_ask_precision * sent[r])
            for word, replies in sorted(before.items())
        }
        self.asks_ = {w: r for w, r in self.asks_.items() if r}
        return self

    def unmet(self, state: UIState, action: Action) -> list[str]:
        """The preconditions of ``action`` (on this state's process) that the customer has not said yet."""
        needed = self.needs_.get(process_key(state.process_id, action_name(action)))
        if not needed:
            return []
        words = customer_said(state, MIN_WORD)
        return [w for w in needed if not _holds(w, words)]

    def met(self, state: UIState, action: Action) -> bool:
        """Whether ``action`` has preconditions (on this state's process) and the customer has said them all."""
        needed = self.needs_.get(process_key(state.process_id, action_name(action)))
        return bool(needed) and not self.unmet(state, action)

    def asked_again(self, state: UIState, text: str) -> list[str]:
        """The words the reply ``text`` asks for (``asks_for``) that the customer's messages already hold."""
        said = customer_said(state, MIN_WORD)
        return [w for w in self.asks_ if _holds(w, said) and self.asks_for(text, [w])]

    def asks_for(self, text: str, words: list[str]) -> bool:
        """Whether the reply ``text`` asks for one of ``words``: it names the word and matches a reply operators
        send to ask for it (the same wording, values aside)."""
        named, said = words_of(text, MIN_WORD), words_of(text)
        return any(
            _holds(word, named) and any(matches_template(said, t) for t in self.asks_.get(word, [])) for word in words
        )
