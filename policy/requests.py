"""Requests a customer makes in passing, and whether they are still unanswered: learned from the traces.

A customer's opening often carries a second request beside the case's own ("... Also, when does my contract
end?"). Operators answer it before they close the chat. A policy that reads the opening as one message among
the others closes too early: in the sandbox's copilot reviews of the default policy (3,000 cases) this was the
commonest single error, 310 of the 456 unacceptable ``close_chat`` proposals, with the request in plain sight
in the prompt. Whether a request has been answered is a fact of the chat, so it is checked, not guessed.

**Learning** (``fit``). For every case: the words of the customer's first message (four letters or more) and
the replies the operator sent (slot form, as the template bank holds them). A reply *answers* a word when

- it was sent in at least ``min_cases`` cases whose opening holds the word,
- almost only then: of the cases where it was sent, at least ``min_precision`` have the word in the opening,
- and far more often with the word than without it, within the processes where the reply occurs (lift >=
  ``min_lift``): a word every opening of a process holds ("order") predicts none of that process's replies.

The words that tell some reply best (precision, then cases, then lift, then length) are the candidates, each
with every reply it passes the tests with, the case count relaxed to ``ANSWER_CASES`` (rarer wordings of the
same answer). A candidate is *tracked* when operators sent one of its answers in at least ``min_answered`` of
the cases whose opening holds it, within the processes where its answers occur: they treat it as a request of
its own there ("invoice" beside a plan change; in a billing dispute it is the case itself). Candidates with the
same answers name one request: the word whose mentions are answered most often stays.

**Reading** (``pending``). A tracked word of the opening (typos allowed from five letters on, between words
whose lengths differ by one letter at most: ``policy.words.similar``), in a process where it is answered, one
whose traces do not show that it is left unanswered there (too few openings hold it), or one the traces did not
have, is pending while no operator message in the chat matches one of its answers;
``answers`` says whether a reply answers one of given requests. A reply matches a template when it holds at
least ``policy.words.MATCH_SHARE`` of the template's words (slots left out: the values differ from case to case).

Only the opening is learned from: a later question ("Will you confirm by email?") is the latest message, which
the policy reads in full. But operators answer a request of the opening first about half the time, and the
customer then thanks them for that answer, so the question is two messages back when the chat comes to be
closed (the commonest unacceptable close of decision 0022's policy in the sandbox's copilot reviews).
``open_question`` reads that: a customer question after the opening is *open* while every operator message
after it answers a request of the opening (or there is none).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Self

from scipy.stats import binom

from policy.readers import Reader
from policy.serialise import reply_template
from policy.values import recent_chat
from policy.words import MIN_CUE_WORD, matches_template, similar, typo_folding, words_of
from schemas.actions import SendTextToChat
from schemas.state import ChatRole, UIState
from schemas.trace import Trace

_Request = tuple[float, int, str, frozenset[str]]  # a candidate request: (answered share, length, word, processes)
# A tracked word's answers include replies seen with it only this often: a wording missing from the answers reads
# as an answer not given (the chat closed too early), while a spurious member can only hide a pending request.
ANSWER_CASES = 2
UNANSWERED_LEVEL = 0.05


def opening(state: UIState) -> str:
    """The customer's first message ("" before they wrote)."""
    return next((m.text for m in state.chat if m.role == ChatRole.CUSTOMER), "")


_SENTENCE = re.compile(r"[^.!?]*\?")
QUESTION_WORDS = 2  # words of MIN_CUE_WORD letters a question needs to ask something ("Seriously?" asks nothing)


def questions(text: str) -> list[str]:
    """The sentences of a message that ask something: each ending in a question mark, with at least
    ``QUESTION_WORDS`` words of ``MIN_CUE_WORD`` letters or more."""
    return [q.strip() for q in _SENTENCE.findall(text) if len(words_of(q, MIN_CUE_WORD)) >= QUESTION_WORDS]


def _asks(text: str) -> bool:
    """Whether a message holds a question that asks something (``questions``)."""
    return bool(questions(text))


@dataclass
class RequestTracker(Reader):
    """Opening words operators answer as requests of their own, with their answers (see the module docstring).

    Learned: ``answers_`` maps a tracked word to the reply templates (slot form) that answer it, ``processes_``
    to the processes where it is read as a request (those where operators answer it, and those whose traces do
    not show that they leave it unanswered); ``known_processes_`` are the processes of the traces."""

    min_cases: int = 8
    min_precision: float = 0.9
    min_lift: float = 10.0
    min_answered: float = 0.5
    answers_: dict[str, list[str]] = field(default_factory=dict)
    processes_: dict[str, list[str]] = field(default_factory=dict)
    known_processes_: list[str] = field(default_factory=list)

    def fit(self, traces: Iterable[Trace]) -> Self:
        cases: list[tuple[str, set[str], set[str]]] = []  # (process, opening words, replies sent)
        worked = [t for t in traces if t.steps]
        openings = [words_of(opening(t.steps[-1].state), MIN_CUE_WORD) for t in worked]
        folded = typo_folding(Counter(w for words in openings for w in words))
        for trace, words in zip(worked, openings, strict=True):
            words = {folded.get(w, w) for w in words}
            replies = {
                reply_template(step.action, step.state)
                for step in trace.steps
                if isinstance(step.action, SendTextToChat)
            }
            cases.append((trace.process_id, words, replies))
        sent = Counter(r for _, _, replies in cases for r in replies)
        processes_of: dict[str, set[str]] = defaultdict(set)
        for process, _, replies in cases:
            for reply in replies:
                processes_of[reply].add(process)
        with_word: dict[str, Counter[str]] = defaultdict(Counter)  # word -> reply -> cases with both
        in_process: dict[str, Counter[str]] = defaultdict(Counter)  # process -> word -> cases
        process_cases: Counter[str] = Counter()
        for process, words, replies in cases:
            in_process[process].update(words)
            process_cases[process] += 1
            for word in words:
                with_word[word].update(replies)
        associated: dict[str, set[str]] = defaultdict(set)  # word -> replies that pass the tests with it
        best: dict[str, tuple[float, int, float, int, str]] = {}  # reply -> (precision, cases, lift, length, word)
        for word, together in with_word.items():
            for reply, both in together.items():
                if both < ANSWER_CASES or both < self.min_precision * sent[reply]:
                    continue
                scope = processes_of[reply]  # the processes where the reply occurs
                having = sum(in_process[p][word] for p in scope)
                lacking = sum(process_cases[p] for p in scope) - having
                rate_with = both / having
                rate_without = (sent[reply] - both) / lacking if lacking else 1.0
                lift = rate_with / max(rate_without, 1.0 / max(lacking, 1))
                if lift < self.min_lift:
                    continue
                # One word per reply, the most telling: "Also, can you update my email address?" is about
                # "email", not "also", "update" or "address" (as frequent with the reply, less specific to it).
                associated[word].add(reply)
                key = (both / sent[reply], both, lift, len(word), word)
                if both >= self.min_cases and (reply not in best or key > best[reply]):
                    best[reply] = key
        by_answers: dict[frozenset[str], _Request] = {}
        for word in sorted({key[-1] for key in best.values()}):
            answer_set = frozenset(associated[word])
            scope = set().union(*(processes_of[r] for r in answer_set))
            asked = [sent_replies for process, words, sent_replies in cases if process in scope and word in words]
            share = sum(1 for sent_replies in asked if sent_replies & answer_set) / len(asked)
            # Words that name one request ("contract", "does") keep the one its mentions are answered after most
            # often, then the longer: the fewer states it reads as a request that is none.
            if share >= self.min_answered and (
                answer_set not in by_answers or (share, len(word), word) > by_answers[answer_set][:3]
            ):
                by_answers[answer_set] = (share, len(word), word, frozenset(scope))
        self.answers_ = dict(sorted((word, sorted(answers)) for answers, (_, _, word, _) in by_answers.items()))
        self.processes_ = {
            word: sorted(scope | self._not_shown_unanswered(word, frozenset(answers), share, cases))
            for answers, (share, _, word, scope) in by_answers.items()
        }
        self.known_processes_ = sorted(process_cases)
        return self

    def _not_shown_unanswered(
        self, word: str, answers: frozenset[str], share: float, cases: list[tuple[str, set[str], set[str]]]
    ) -> set[str]:
        """The processes whose traces do not show that operators leave ``word`` unanswered there: it is
        answered in as many of their openings holding it as chance allows, given that ``share`` of them are
        answered where its answers occur (one-sided binomial test at ``UNANSWERED_LEVEL``). A process with a
        handful of such openings cannot show it (warranty claims asking "when does my contract end?" in one
        case of fifty) and, like a process the traces did not have, reads the word as a request; six billing
        disputes asking for an email change, none answered, show that it is not one there."""
        asked: Counter[str] = Counter()
        answered: Counter[str] = Counter()
        for process, words, replies in cases:
            if word in words:
                asked[process] += 1
                answered[process] += bool(replies & answers)
        processes = {process for process, _, _ in cases}
        return {p for p in processes if binom.cdf(answered[p], asked[p], share) >= UNANSWERED_LEVEL}

    def _answered_by(self, text_words: set[str], word: str) -> bool:
        """Whether a message with these words matches one of ``word``'s answers."""
        return any(matches_template(text_words, t) for t in self.answers_.get(word, []))

    def requested(self, state: UIState) -> list[str]:
        """The tracked words the customer's opening holds (typos allowed), in a process where operators answer
        them (or one the traces did not have): "invoice" is a request beside a plan change, the case itself in
        a billing dispute."""
        words = sorted(words_of(opening(state), MIN_CUE_WORD))
        unseen = state.process_id not in self.known_processes_
        return [
            w
            for w in self.answers_
            if (unseen or state.process_id in self.processes_.get(w, ())) and any(similar(w, c) for c in words)
        ]

    def pending(self, state: UIState) -> list[str]:
        """The tracked requests of the opening that no operator message has answered yet."""
        said = [words_of(m.text) for m in state.chat if m.role != ChatRole.CUSTOMER]
        return [word for word in self.requested(state) if not any(self._answered_by(w, word) for w in said)]

    def open_question(self, state: UIState) -> str | None:
        """The customer's latest question after their opening (``_asks``, in the chat window) if no operator
        message after it is anything but an answer to a request of the opening."""
        window = recent_chat(state)
        first = next((m for m in state.chat if m.role == ChatRole.CUSTOMER), None)
        asked = [i for i, m in enumerate(window) if m.role == ChatRole.CUSTOMER and m is not first and _asks(m.text)]
        if not asked:
            return None
        requested = self.requested(state)
        after = [m.text for m in window[asked[-1] + 1 :] if m.role != ChatRole.CUSTOMER]
        return None if any(not self.answers(text, requested) for text in after) else window[asked[-1]].text

    def asked(self, state: UIState) -> str | None:
        """The questions of the open later question (``open_question``), without the rest of its message: what
        the prompt's ``asked`` line says."""
        message = self.open_question(state)
        return None if message is None else " ".join(questions(message))

    def pending_answers(self, state: UIState) -> list[str]:
        """The reply templates (slot form) that answer the state's pending requests."""
        return [t for word in self.pending(state) for t in self.answers_[word]]

    def answers(self, text: str, requests: Sequence[str]) -> bool:
        """Whether the reply ``text`` answers one of ``requests`` (tracked words, such as ``pending(state)``)."""
        words = words_of(text)
        return any(self._answered_by(words, word) for word in requests)
