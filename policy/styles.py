"""The operator's style, as their earlier replies and choices in the case show it: learned from the traces.

Operators word the same reply differently and each keeps to their own wording ("Thanks for contacting us" or
"Hi there"; "The amount is 94.95, for your coffee machine." or "... for the coffee machine."), and each has
choices they lean to where the customer leaves one open (a replacement rather than a refund). A small policy
that sees one reply of theirs in the prompt did not learn which wording of the next reply goes with it: in the
sandbox most of its wrong replies were the right answer in another operator's words, proposed with high
confidence. The style is a fact of the case once the operator has written or chosen, so it is read: written in
the prompt (``style 2``), as the pending requests are, and used to weigh the replies and options the policy
scores (``habit_weights``): the line alone did not teach the small model the wording.

**Learning** (``fit``). Each case is the set of its operator's *habits* (the replies they sent, as their wording:
slot form with every slot pooled, ``habit``; and the options they selected where the choice was open, as action
text), among those of at least ``min_cases`` cases. A wording is one habit whichever values fill it: in full slot
form, "The amount is ⟦panel.order.price⟧, for your ⟦panel.order.item⟧." and the same words filled from the row the
customer names were two habits, the second too rare to be one, so where it was due the operator's own wording got no
weight from the style (decision 0030; on the sandbox, where few wordings come in several slot forms, with no gain
separable from noise). A choice is open when the customer's words neither named nor cued an option of the control
(``policy.option_cues``, bound with ``bind``): an operator who selects the refund the customer asked for shows the
customer's wish, not a leaning, and counting it blurred the leaning (the style moved a remedy by 0.1-0.4 nats where
the operators of one style chose the replacement in nine open cases of ten; decision 0029). A choice habit counts
only in the cases where that control's choice was open, so its presence is P(option | style, choice open). A
latent-class model explains the habits: a case has one of ``K`` styles, and a style shows each habit with a
probability of its own (``presence_``). A habit counts only in the processes where it occurs, so the classes explain
how operators differ within a process, not which process a case is. Where the traces name the operator
(``TraceStep.operator_id``), an operator with ``min_operator_cases`` cases keeps one style over all of them: their
cases are one group, and the model explains groups (a case of an unnamed or rare operator is a group of its own).
One case shows few habits, an operator's hundred cases show their style plainly: on the sandbox, cases alone gave
six mixed styles, their operators the four styles the sandbox has. EM from ``restarts`` seeded starts fits each
``K`` up to ``max_styles`` on four in five cases; the fewest styles that explain the fifth (each under its
operator's style, as the other cases show it) within one standard error of the best stay and are refitted on all (1
means the traces show no styles: nothing is written or weighed).

**Reading**. The habits a state shows: its operator messages in the chat window, each matched to the reply
template whose words it holds best (at least ``policy.words.MATCH_SHARE`` of them), and the selects in its kept
history whose choice the customer's words do not settle. The posterior over styles given them (their presence
only: a reply not sent yet says nothing) names a style when its largest share is at least ``min_posterior``
(``style``), and ``habit_weights`` gives each
habit's log(P(habit | posterior) / P(habit)), by which ``LMPolicy`` weighs a candidate showing it (Bayes' rule
over the styles; 0 for all while the state shows no habit). The replies then keep the probability the model gave
them together (decision 0024), and so do the options of one select (decision 0027): the model says whether a
reply or that select is due, the style in whose words or with which leaning. Options the customer's words or a
tool's result settle (``policy.option_cues``) are not weighed, and where the customer's choice is open the reply
guard asks rather than propose the leaning (decision 0017).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Self

import numpy as np
from scipy.special import logsumexp

from policy.readers import Reader
from policy.serialise import CuedOptions, action_text, literal_action_text, named_or_cued, reply_of
from policy.slots import SLOT
from policy.values import recent_chat
from policy.words import holds_words, template_words, words_of
from schemas.actions import Action, SelectOption, SendTextToChat
from schemas.state import ChatRole, UIState
from schemas.trace import Trace

_EPS = 1e-6
HOLD_OUT_EVERY = 5  # every fifth case is held out to choose the number of styles
MATCHED_CACHE = 4096  # messages remembered with the habit they matched
CHOICE_PREFIX = "select "  # a choice habit's action text (``literal_action_text``)
POOLED_SLOT = "⟦value⟧"  # every slot of a reply habit: a wording is one habit whichever values fill it


_Fit = tuple[float, np.ndarray, np.ndarray, np.ndarray]  # (log likelihood, class weights, presence, responsibilities)


def _em(on: np.ndarray, off: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> _Fit:
    """One EM run of a Bernoulli latent-class model with ``k`` classes over groups of cases, from random
    responsibilities drawn from ``rng``. ``on`` / ``off`` count per group and habit the cases that show the habit
    / do not, where it counts (a habit where it does not occur counts in neither); a group is one operator's
    cases, or one case. Returns the groups' class weights and each class's presence per habit."""
    n, t = on.shape
    resp = rng.dirichlet(np.ones(k), size=n)
    loglik = -math.inf
    weights = np.full(k, 1.0 / k)
    presence = np.full((k, t), 0.5)
    for _ in range(iterations):
        weights = (resp.sum(axis=0) + 1.0) / (n + k)
        presence = np.clip((resp.T @ on + 0.5) / (resp.T @ (on + off) + 1.0), _EPS, 1 - _EPS)
        joint = np.log(weights)[None, :] + on @ np.log(presence).T + off @ np.log1p(-presence).T
        norm = logsumexp(joint, axis=1)
        resp = np.exp(joint - norm[:, None])
        new = float(norm.sum())
        if new - loglik < 1e-4 * n:
            loglik = new
            break
        loglik = new
    return loglik, weights, presence, resp


_Counts = tuple[np.ndarray, np.ndarray, np.ndarray]  # per group: habit shown, not shown (where it counts); cases


def _group_counts(x: np.ndarray, seen: np.ndarray, groups: np.ndarray, rows: np.ndarray) -> _Counts:
    """Per group, how many of the cases ``rows`` marks show each habit and how many do not, where it counts; and
    how many such cases it has."""
    n_groups = int(groups.max()) + 1
    on, off = np.zeros((n_groups, x.shape[1])), np.zeros((n_groups, x.shape[1]))
    np.add.at(on, groups[rows], (x * seen)[rows])
    np.add.at(off, groups[rows], ((1 - x) * seen)[rows])
    return on, off, np.bincount(groups[rows], minlength=n_groups)


def _case_shares(resp: np.ndarray, cases: np.ndarray) -> np.ndarray:
    """The styles' shares of the cases (``cases`` per group), one case added to each style: a new case's prior (an
    operator with many cases weighs more than a case of its own). A group without cases has no responsibilities."""
    counted = cases > 0
    return (cases[counted] @ resp[counted] + 1.0) / (cases.sum() + resp.shape[1])


def operator_of(trace: Trace) -> str | None:
    """The operator who did most of the case's steps (None when its steps name none)."""
    ids = Counter(step.operator_id for step in trace.steps if step.operator_id)
    return ids.most_common(1)[0][0] if ids else None


@dataclass
class OperatorStyles(Reader):
    """Latent operator styles over the habits their cases show (see the module docstring).

    Learned: ``templates_`` (the habits: replies and selects as action text in slot form; the name is the saved
    key), ``weights_`` (each style's share of cases) and ``presence_`` (per style, the probability that a case of
    that style shows each habit, where the habit occurs)."""

    max_styles: int = 6
    min_cases: int = 8
    min_operator_cases: int = 20
    min_posterior: float = 0.8
    restarts: int = 4
    iterations: int = 200
    seed: int = 0
    open_choices: bool = True
    pooled_slots: bool = True
    templates_: list[str] = field(default_factory=list)
    weights_: list[float] = field(default_factory=list)
    presence_: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cues: CuedOptions | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """The saved styles; a save without ``open_choices`` was fitted on every select and reads them so, one
        without ``pooled_slots`` on replies in their full slot form."""
        return super().from_dict({"open_choices": False, "pooled_slots": False, **data})

    def habit(self, text: str) -> str:
        """The habit an action text (slot form) shows: a reply's wording, its slots pooled where ``pooled_slots``
        (one habit whichever values fill it); a choice as it is."""
        if self.pooled_slots and reply_of(text) is not None:
            return SLOT.sub(POOLED_SLOT, text)
        return text

    def bind(self, cues: CuedOptions | None) -> Self:
        """Read which choices the customer's words settle with ``cues`` (the policy's option cues; not saved with
        the styles, so a loaded policy binds its own)."""
        self._cues = cues
        return self

    def _settled(self, state: UIState, control_id: str, chosen: str) -> bool:
        """Whether the customer's words name or cue an option of the control (``chosen`` stands for the options
        when the control is no longer on the screen)."""
        options = list(getattr(state.screen.control(control_id), "options", None) or [chosen])
        return named_or_cued(state, control_id, options, self._cues)

    def _case_habits(self, trace: Trace) -> tuple[set[str], set[str]]:
        """A case's habits, and the controls whose choice was open in it (every select's with ``open_choices``
        off, as models saved before it were fitted)."""
        habits: set[str] = set()
        open_on: set[str] = set()
        for step in trace.steps:
            action = step.action
            if isinstance(action, SelectOption):
                if self.open_choices and self._settled(step.state, action.control_id, action.option):
                    continue
                open_on.add(action.control_id)
            if _is_habit(action):
                habits.add(self.habit(action_text(action, step.state)))
        return habits, open_on

    def fit(self, traces: Iterable[Trace], cues: CuedOptions | None = None) -> Self:
        self.bind(cues)
        cases: list[tuple[str, set[str], str | None, set[str]]] = []
        for trace in traces:
            habits, open_on = self._case_habits(trace)
            cases.append((trace.process_id, habits, operator_of(trace), open_on))
        shown = Counter(h for _, habits, _, _ in cases for h in habits)
        templates = sorted(h for h, n in shown.items() if n >= self.min_cases and _words_of_habit(h))
        self.templates_, self.weights_, self.presence_ = [], [], []
        for cached in ("_replies", "_index", "_matched", "_arrays"):  # what an earlier fit cached
            self.__dict__.pop(cached, None)
        if not templates or len(cases) < 2:
            return self
        index = {t: i for i, t in enumerate(templates)}
        processes_of: dict[str, set[str]] = defaultdict(set)
        for process, habits, _, _ in cases:
            for habit in habits:
                if habit in index:
                    processes_of[habit].add(process)
        x = np.zeros((len(cases), len(templates)))
        seen = np.zeros_like(x)
        for row, (process, habits, _, open_on) in enumerate(cases):
            for habit, i in index.items():
                counted = process in processes_of[habit]
                control = _choice_control(habit)
                if control is not None and self.open_choices:
                    counted = counted and control in open_on  # a leaning shows only where the choice was open
                seen[row, i] = counted
                x[row, i] = habit in habits
        groups = self._groups([operator for _, _, operator, _ in cases])
        rng = np.random.default_rng(self.seed)
        held = np.arange(len(cases)) % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1
        fitted = _group_counts(x, seen, groups, ~held)
        scores = [
            self._held_out(fitted, x[held], seen[held], groups[held], k, rng) for k in range(1, self.max_styles + 1)
        ]
        best = int(np.argmax([s.sum() for s in scores]))
        # The fewest styles within one standard error of the best (paired over the held-out cases): more styles
        # that explain the held-out cases no better split the operators by chance.
        k = next(
            i + 1
            for i, s in enumerate(scores)
            if (scores[best] - s).sum() <= np.sqrt(len(s)) * float(np.std(scores[best] - s))
        )
        everyone = np.ones(len(cases), dtype=bool)
        counts = _group_counts(x, seen, groups, everyone)
        _, _, presence, resp = self._best_run(counts, k, rng)
        if k > 1:
            self.templates_ = templates
            self.weights_ = [float(w) for w in _case_shares(resp, counts[2])]
            self.presence_ = [[float(p) for p in row] for row in presence]
        return self

    def _groups(self, operators: list[str | None]) -> np.ndarray:
        """Each case's group: its operator's when the operator has ``min_operator_cases`` cases or more (an
        operator keeps one style), else a group of its own."""
        counts = Counter(o for o in operators if o is not None)
        kept = sorted(o for o, n in counts.items() if n >= self.min_operator_cases)
        ids = {o: i for i, o in enumerate(kept)}
        out = np.empty(len(operators), dtype=np.int64)
        single = len(kept)
        for row, operator in enumerate(operators):
            if operator in ids:
                out[row] = ids[operator]
            else:
                out[row], single = single, single + 1
        return out

    def _best_run(self, counts: _Counts, k: int, rng: np.random.Generator) -> _Fit:
        """The best of ``restarts`` EM runs on the groups' counts (the responsibilities are indexed by group; a
        group without counted cases has none of its own)."""
        on, off, cases = counts
        present = cases > 0
        runs = [_em(on[present], off[present], k, rng, self.iterations) for _ in range(1 if k == 1 else self.restarts)]
        loglik, weights, presence, resp = max(runs, key=lambda run: run[0])
        full = np.full((len(present), k), np.nan)
        full[present] = resp
        return loglik, weights, presence, full

    def _held_out(
        self,
        fitted: _Counts,
        xh: np.ndarray,
        sh: np.ndarray,
        gh: np.ndarray,
        k: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Each held-out case's log-likelihood (habits ``xh``, where they count ``sh``, group ``gh``) under ``k``
        styles fitted on the other cases' counts: its style is its operator's as the other cases of that operator
        show it, or drawn from the styles' shares of those cases (the prior a new case gets, ``weights_``)."""
        _, _, presence, resp = self._best_run(fitted, k, rng)
        prior = resp[gh]
        prior = np.where(np.isnan(prior), _case_shares(resp, fitted[2])[None, :], prior)
        likelihood = (xh * sh) @ np.log(presence).T + ((1 - xh) * sh) @ np.log1p(-presence).T
        return logsumexp(np.log(np.clip(prior, 1e-300, None)) + likelihood, axis=1)

    @cached_property
    def _replies(self) -> list[tuple[int, frozenset[str]]]:
        """(index, words) of every reply habit: the templates a sent message is matched against."""
        out = []
        for i, habit in enumerate(self.templates_):
            template = reply_of(habit)
            if template is not None:
                out.append((i, template_words(template)))
        return out

    @cached_property
    def _index(self) -> dict[str, int]:
        return {habit: i for i, habit in enumerate(self.templates_)}

    @cached_property
    def _matched(self) -> dict[str, int | None]:
        """Messages already matched (a chat's messages recur in every later state of its case)."""
        return {}

    @cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log weights, log presence per style and habit, log of each habit's overall presence)."""
        weights, presence = np.array(self.weights_), np.array(self.presence_)
        return np.log(weights), np.log(presence), np.log(weights @ presence)

    def _template_of(self, text: str) -> int | None:
        """The reply habit a sent message says best (most of its words held, then fewest extra), if any."""
        if text in self._matched:
            return self._matched[text]
        words = words_of(text)
        best: tuple[float, int] | None = None
        for i, wanted in self._replies:
            if not holds_words(words, wanted):
                continue
            score = len(wanted & words) / len(wanted | words)
            if best is None or score > best[0]:
                best = (score, i)
        if len(self._matched) >= MATCHED_CACHE:
            self._matched.clear()
        self._matched[text] = None if best is None else best[1]
        return self._matched[text]

    def _observed(self, state: UIState) -> set[int]:
        """The habits the state shows: the replies in the chat window's operator messages and the choices in the
        kept history."""
        found = {self._template_of(m.text) for m in recent_chat(state) if m.role == ChatRole.OPERATOR}
        found.update(
            self._index.get(literal_action_text(a))
            for a in state.recent_actions
            if isinstance(a, SelectOption) and not (self.open_choices and self._settled(state, a.control_id, a.option))
        )
        return {i for i in found if i is not None}

    def _posterior(self, state: UIState, observed: set[int] | None = None) -> np.ndarray | None:
        if not self.weights_:
            return None
        log_weights, log_presence, _ = self._arrays
        shown = self._observed(state) if observed is None else observed
        log_post = log_weights + log_presence[:, sorted(shown)].sum(axis=1)
        post = np.exp(log_post - log_post.max())
        return post / post.sum()

    def habit_weights(self, state: UIState) -> dict[str, float]:
        """Per habit (a reply's wording, a choice as its action text: ``habit``), how much more likely the operator's
        style makes it than operators at large show it: log(P(habit | style posterior) / P(habit)). Bayes' rule over
        the styles: the policy scores a reply as any operator might word it and an open choice as any operator
        might make it, and this turns that into the wording and the leaning of this operator (0 for every habit
        while the state shows none, {} when no style is learned). ``LMPolicy`` weighs the replies together and
        each select's options together, so the style says which wording or option, never whether to reply or
        select (decisions 0024 and 0027); where the customer's choice is open, the guard asks rather than take
        the leaning (decision 0017)."""
        post = self._posterior(state)
        if post is None:
            return {}
        _, log_presence, log_overall = self._arrays
        given = np.log(post @ np.exp(log_presence)) - log_overall
        return {habit: float(weight) for habit, weight in zip(self.templates_, given, strict=True)}

    def style(self, state: UIState) -> int | None:
        """The style the habits shown so far name (numbered from 1), or None while they name none."""
        observed = self._observed(state)
        post = self._posterior(state, observed) if observed else None
        if post is None:
            return None
        z = int(np.argmax(post))
        return z + 1 if post[z] >= self.min_posterior else None


def _is_habit(action: Action) -> bool:
    """Replies (their wording) and choices (the option an operator picks when the customer leaves it open)."""
    return isinstance(action, SendTextToChat | SelectOption)


def _choice_control(habit: str) -> str | None:
    """The control a choice habit selects on (``select remedy = refund``: ``remedy``), None for a reply."""
    if not habit.startswith(CHOICE_PREFIX):
        return None
    return habit[len(CHOICE_PREFIX) :].split(" = ", 1)[0]


def _words_of_habit(habit: str) -> bool:
    """Whether a habit can be recognised: a choice always, a reply by words of its own besides its slots."""
    template = reply_of(habit)
    return template is None or bool(template_words(template))
