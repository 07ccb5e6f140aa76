"""The customer's words and the tool results that settle a select's option, learned from the traces.

A select is settled by what the customer said: "I was charged twice" is a ``duplicate`` dispute, "it's a charge
I don't recognise" an ``unknown_charge``. The prompt's ``~`` hint names the options the customer's words name
literally (``serialise.mentioned_options``), which covers "I'd like a refund" and not "charged twice". A small
model has to learn the rest from a few hundred select steps, and what it learns varies from one training run to
the next (two runs of the default policy on the same traces: 71% and 38% of the disputes' types right).
The same holds for a tool's result: a parcel signed for (``order.proof=signature``) gets "wait 24 hours", not a
redelivery, and the same model read that right in 92% and 68% of the steps in the two runs. Which word or
result settles which option is a fact of the traces, so it is counted, and the hint names the cued options too.

**Learning** (``fit``). For every select step of the traces: the words of the customer's messages so far (four
letters or more, rare misspellings folded onto the word they misspell), the panels' fields
(``panel.field=value``, ``panel_facts``) and the option the operator chose. A word or a field value *cues* an
option of a control (per process) when it occurs in at least ``min_cases`` of the control's
steps, the operator chose that option in at least ``min_precision`` of them, and more often than the option's
own share leaves room for (halfway from the base rate to certainty): a word every customer writes cues nothing.

**Reading** (``cued``). The options of a select whose cue words the customer's messages hold (typos allowed
from five letters on: ``policy.words.similar``) or whose cue field values the panels show.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

from policy.readers import Reader, process_key
from policy.values import said_by_customer
from policy.words import MIN_CUE_WORD, similar, typo_folding
from schemas.actions import SelectOption
from schemas.state import UIState
from schemas.trace import Trace

MAX_FACT_CHARS = 40  # longer panel values are texts, not facts an option turns on


def customer_words(state: UIState) -> set[str]:
    """The words of the customer's messages the policy reads (``recent_chat``), four letters or more."""
    return said_by_customer(state, MIN_CUE_WORD)


def panel_facts(state: UIState) -> set[str]:
    """The state's panel fields as ``panel.field=value`` (tables left out): what a tool settled, such as
    ``order.proof=signature``."""
    return {
        f"{panel_id}.{name}={value}"
        for panel_id, panel in state.panels.items()
        for name, value in panel.fields.items()
        if value and len(value) <= MAX_FACT_CHARS
    }


def settling_signs(
    steps: Iterable[tuple[str, str, set[str]]], min_cases: int, min_precision: float
) -> dict[str, dict[str, list[str]]]:
    """From select steps (control key, option chosen, the signs seen: words, panel facts), per control and option
    the signs that settle it: seen in at least ``min_cases`` of the control's steps, with that option chosen in
    at least ``min_precision`` of them and more often than the option's own share leaves room for (halfway from
    the base rate to certainty)."""
    chosen: dict[str, Counter[str]] = defaultdict(Counter)  # key -> option -> steps
    with_sign: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for key, option, signs in steps:
        chosen[key][option] += 1
        for sign in signs:
            with_sign[key][sign][option] += 1
    settled: dict[str, dict[str, list[str]]] = {}
    for key, by_sign in sorted(with_sign.items()):
        total = sum(chosen[key].values())
        for sign, options in sorted(by_sign.items()):
            cases = sum(options.values())
            option, count = options.most_common(1)[0]
            base = chosen[key][option] / total
            if cases >= min_cases and count / cases >= max(min_precision, (1 + base) / 2):
                settled.setdefault(key, {}).setdefault(option, []).append(sign)
    return settled


@dataclass
class OptionCues(Reader):
    """Words that settle a select's option (see the module docstring). Learned: ``cues_`` maps process and
    control (``process\\x1fcontrol``) to option to its cue words."""

    min_cases: int = 8
    min_precision: float = 0.9
    cues_: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def fit(self, traces: Iterable[Trace]) -> Self:
        steps: list[tuple[str, str, set[str], set[str]]] = []  # (key, chosen option, customer words, facts)
        for trace in traces:
            for step in trace.steps:
                if isinstance(step.action, SelectOption):
                    key = process_key(trace.process_id, step.action.control_id)
                    steps.append((key, step.action.option, customer_words(step.state), panel_facts(step.state)))
        folded = typo_folding(Counter(w for _, _, words, _ in steps for w in words))
        signs = [(key, option, {folded.get(w, w) for w in words} | facts) for key, option, words, facts in steps]
        self.cues_ = settling_signs(signs, self.min_cases, self.min_precision)
        return self

    def cued(self, state: UIState, control_id: str) -> list[str]:
        """The options of ``control_id`` (on this state's process) that the customer's words cue."""
        by_option = self.cues_.get(process_key(state.process_id, control_id))
        if not by_option:
            return []
        words, facts = customer_words(state), panel_facts(state)
        return [
            option
            for option, option_cues in by_option.items()
            if any(c in facts if "=" in c else any(similar(c, w) for w in words) for c in option_cues)
        ]
