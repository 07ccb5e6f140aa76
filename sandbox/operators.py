"""Simulated operators: a style (order of work, optional steps, wording), skill (mistakes), speed (a time model
per action type), and how they review a copilot proposal (accept, or correct with a graded reason)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sandbox.crm import PLANS
from sandbox.playbook import STYLES, Screen, Style, style_distribution
from sandbox.processes.billing_dispute import CHARGES
from sandbox.processes.delivery_status import HUBS
from sandbox.processes.orders import ITEMS
from sandbox.view import View, classify_operator_text
from sandbox.world import World
from schemas import (
    Action,
    ActionType,
    ActionValidationError,
    CloseChat,
    FillField,
    RejectReason,
    ScreenSchema,
    SelectOption,
    SendTextToChat,
    Verdict,
    action_key,
    validate_action,
)
from schemas.screen import ControlKind

Distribution = dict[str, tuple[Action, float]]

# Mean seconds an operator spends on one action of each type (before their speed factor); reading each new
# customer message costs READ_SECONDS. Free text is typed: its time grows with the length of the reply.
MEAN_SECONDS: dict[ActionType, float] = {
    ActionType.FILL_FIELD: 9.0,
    ActionType.SELECT_OPTION: 5.0,
    ActionType.TOGGLE_CHECKBOX: 3.0,
    ActionType.CLICK_CONTROL: 6.0,
    ActionType.SEND_TEXT_TO_CHAT: 12.0,
    ActionType.TRANSFER_CHAT: 14.0,
    ActionType.CLOSE_CHAT: 10.0,
}
TYPING_SECONDS_PER_CHAR = 0.18
READ_SECONDS = 7.0


@dataclass(frozen=True)
class SimOperator:
    operator_id: str
    style: Style
    mistake_rate: float  # share of actions done wrong (a wrong option, a mistyped number)
    speed: float  # multiplier on the time model (1.0 = average)
    accept_alternative: float  # P(accept an acceptable proposal that is not what they would have done)
    accept_alternative_text: float  # the same for a reply worded differently from their own
    lazy_accept: float  # P(accept a wrong proposal without noticing)
    environment_reject: float = 0.012  # P(reject because the screen or a tool misbehaved), classic world only
    other_reject: float = 0.02  # P(reject for other reasons); the calibrated world sets it per case
    flags_guesses: bool = False  # a committed guess is a model error (calibrated world)
    strict_facts: bool = False  # a reply must state the same named facts (plans, items), not only ids and amounts
    wording_only: bool = False  # accept_alternative_text only for a reply with the intent of their own reply

    def action_seconds(self, action: Action, rng: random.Random) -> float:
        base = MEAN_SECONDS[action.type]
        if isinstance(action, SendTextToChat):
            base += TYPING_SECONDS_PER_CHAR * len(action.text)
        return round(base * self.speed * rng.lognormvariate(0.0, 0.25), 2)


def operator_pool(size: int = 12, seed: int = 0, world: World | None = None) -> list[SimOperator]:
    """The pool of simulated operators. Their style, skill and speed depend on ``seed`` only; how they review
    a copilot proposal follows ``world`` (default: the calibrated world)."""
    world = world or World()
    rng = random.Random(f"operators:{seed}")
    pool = []
    for i in range(size):
        pool.append(
            SimOperator(
                operator_id=f"op{i:02d}",
                style=STYLES[i % len(STYLES)],
                mistake_rate=round(rng.uniform(0.005, 0.035), 4),
                speed=round(rng.uniform(0.75, 1.35), 3),
                accept_alternative=round(rng.uniform(*world.accept_alternative), 3),
                accept_alternative_text=round(rng.uniform(*world.accept_alternative_text), 3),
                lazy_accept=round(rng.uniform(*world.lazy_accept), 3),
                environment_reject=world.environment_reject,
                other_reject=world.other_reject,
                flags_guesses=world.flag_guesses,
                strict_facts=world.strict_facts,
                wording_only=world.wording_is_the_reply_preference,
            )
        )
    return pool


_DIGITS = re.compile(r"\d")


def mistaken(action: Action, schema: ScreenSchema) -> Action | None:
    """The wrong action a slip turns ``action`` into (still valid on the screen), or None if no slip applies."""
    match action:
        case FillField(control_id=c, value=v):
            control = schema.control(c)
            if control is None or control.kind != ControlKind.NUMBER:
                return None  # ids and text are copied, not typed: only typed amounts get slips
            digits = [i for i, ch in enumerate(v) if ch.isdigit()]
            for a, b in zip(digits[::-1][1:], digits[::-1], strict=False):
                if v[a] != v[b] and b == a + 1:  # swap two adjacent, different digits: a classic slip
                    return FillField(control_id=c, value=v[:a] + v[b] + v[a] + v[b + 1 :])
            return None
        case SelectOption(control_id=c, option=o):
            control = schema.control(c)
            options = list(getattr(control, "options", []))
            if len(options) < 2 or o not in options:
                return None
            return SelectOption(control_id=c, option=options[(options.index(o) + 1) % len(options)])
        case CloseChat(resolution=r):
            codes = schema.resolution_codes
            if len(codes) < 2 or r not in codes:
                return None
            return CloseChat(resolution=codes[(codes.index(r) + 1) % len(codes)])
    return None


def with_mistakes(base: dict[str, tuple[Action, float, str]], rate: float, schema: ScreenSchema) -> Distribution:
    out: Distribution = {}
    for key, (action, p, _item) in base.items():
        slip = mistaken(action, schema)
        keep = p if slip is None else p * (1.0 - rate)
        prev = out.get(key)
        out[key] = (action, keep + (prev[1] if prev else 0.0))
        if slip is not None:
            slip_key = action_key(slip)
            prev = out.get(slip_key)
            out[slip_key] = (slip, p * rate + (prev[1] if prev else 0.0))
    return out


def style_bases(screen: Screen, view: View, schema: ScreenSchema) -> dict[str, dict[str, tuple[Action, float, str]]]:
    """Each style's distribution, restricted to actions the screen accepts (a case that a policy steered off
    the usual path can make a playbook item produce an invalid value; operators would not do that)."""
    out = {}
    for style in STYLES:
        dist = style_distribution(screen, view, style)
        valid = {}
        for key, (action, p, item) in dist.items():
            try:
                validate_action(action, schema)
            except ActionValidationError:
                continue
            valid[key] = (action, p, item)
        total = sum(p for _a, p, _i in valid.values())
        out[style.name] = {k: (a, p / total, i) for k, (a, p, i) in valid.items()} if total > 0 else {}
    return out


def operator_distribution(
    op: SimOperator, bases: dict[str, dict[str, tuple[Action, float, str]]], schema: ScreenSchema
) -> Distribution:
    return with_mistakes(bases[op.style.name], op.mistake_rate, schema)


# Named facts a reply can get wrong besides ids, amounts and dates: the plan, the item, the hub a parcel was last
# scanned in, the disputed charge.
FACT_WORDS = (
    frozenset(PLANS)
    | frozenset(word for item in ITEMS for word in item.split())
    | frozenset(hub.lower() for hub in HUBS)
    | frozenset(CHARGES)
)


def _facts(text: str, strict: bool = False) -> set[str]:
    tokens = [tok.strip(".,!?;:()").lower() for tok in text.split()]
    return {tok for tok in tokens if _DIGITS.search(tok) or (strict and tok in FACT_WORDS)}


def acceptable(
    proposed: Action,
    bases: dict[str, dict[str, tuple[Action, float, str]]],
    guesses: frozenset[str] = frozenset(),
    strict: bool = False,
) -> bool:
    """A proposal is acceptable if some operator style would do it (no slips), other than by a guess (an item
    named in ``guesses``). A reply is acceptable if it has the intent of a reply some style would send and states
    the same facts: ids, amounts and dates, and with ``strict`` also the plan and item names."""
    key = action_key(proposed)
    if any(key in base and base[key][2] not in guesses for base in bases.values()):
        return True
    if isinstance(proposed, SendTextToChat):
        intent = classify_operator_text(proposed.text)
        facts = _facts(proposed.text, strict)
        for base in bases.values():
            for action, _p, item in base.values():
                if (
                    isinstance(action, SendTextToChat)
                    and item not in guesses
                    and classify_operator_text(action.text) == intent
                    and _facts(action.text, strict) == facts
                ):
                    return True
    return False


@dataclass(frozen=True)
class Review:
    verdict: Verdict
    reason: RejectReason | None
    own_action: Action | None  # what the operator did instead (None when accepted or rejected outright)
    acceptable: bool  # the sandbox's truth about the proposal (hidden from the critic)


def review(
    op: SimOperator,
    proposed: Action,
    own: Action,
    bases: dict[str, dict[str, tuple[Action, float, str]]],
    rng: random.Random,
    *,
    guesses: frozenset[str] = frozenset(),
    other_reject: float | None = None,
) -> Review:
    """How ``op`` answers a copilot proposal, given the action ``own`` they would have taken themselves.
    ``guesses``: the items that would be guesses in this state (``StepModel.guesses``); ``other_reject``: the
    case's P(taking over for reasons of their own) (``SandboxPlatform.other_reject_rate``), else the operator's."""
    ok = acceptable(proposed, bases, guesses if op.flags_guesses else frozenset(), op.strict_facts)
    other = op.other_reject if other_reject is None else other_reject
    u = rng.random()
    if u < op.environment_reject:
        return Review(Verdict.REJECT, RejectReason.ENVIRONMENT, None, ok)
    if u < op.environment_reject + other:
        return Review(Verdict.REJECT, RejectReason.OTHER, None, ok)
    if action_key(proposed) == action_key(own):
        return Review(Verdict.ACCEPT, None, None, ok)
    if ok:
        worded = isinstance(proposed, SendTextToChat) and (
            not op.wording_only
            or (
                isinstance(own, SendTextToChat)
                and classify_operator_text(own.text) == classify_operator_text(proposed.text)
            )
        )
        rate = op.accept_alternative_text if worded else op.accept_alternative
        if rng.random() < rate:
            return Review(Verdict.ACCEPT, None, None, ok)
        return Review(Verdict.CORRECT, RejectReason.ACCEPTABLE_ALTERNATIVE, own, ok)
    if rng.random() < op.lazy_accept:
        return Review(Verdict.ACCEPT, None, None, ok)
    return Review(Verdict.CORRECT, RejectReason.MODEL_ERROR, own, ok)
