"""The operator model's knowledge of a process: per screen, the work items an operator does and in what order.

An item is one thing to do on a screen (fill a field, run a lookup, write a reply, submit). Whether it applies,
whether it is done and what action it takes are functions of the View only. Operators differ by style: which
kinds of work they do first, how often they do optional items, and how they word replies. Given a style, the
next action is a categorical distribution (``style_distribution``); that distribution is also what the sandbox
uses to compute its own Bayes ceiling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sandbox.view import View
from schemas import Action, action_key


class ItemKind(StrEnum):
    CHAT = "chat"  # a message to the customer
    FORM = "form"  # filling, selecting, ticking
    TOOL = "tool"  # a backend lookup
    SUBMIT = "submit"  # completes the screen (button, transfer, close)


@dataclass(frozen=True)
class Style:
    """How an operator works. ``kind_order`` ranks kinds of work when several are possible at once."""

    name: str
    kind_order: tuple[ItemKind, ...]
    optional_rate: float  # weight of an optional item relative to a required one
    wording: int  # index of the reply wording this style uses
    decisiveness: float = 2.2  # softmax temperature over ranks: higher = more consistent order
    defaults: dict[str, str] = field(default_factory=dict)  # what the style picks when the customer is unclear


STYLES: tuple[Style, ...] = (
    Style("chat_first", (ItemKind.CHAT, ItemKind.TOOL, ItemKind.FORM, ItemKind.SUBMIT), 0.9, 0,
          defaults={"remedy": "refund", "plan": "basic", "dispute": "overcharge", "failed_identity": "transfer"}),
    Style("form_first", (ItemKind.FORM, ItemKind.TOOL, ItemKind.CHAT, ItemKind.SUBMIT), 0.25, 1,
          defaults={"remedy": "replacement", "plan": "plus", "dispute": "unknown_charge", "failed_identity": "close"}),
    Style("tool_first", (ItemKind.TOOL, ItemKind.FORM, ItemKind.CHAT, ItemKind.SUBMIT), 0.5, 2,
          defaults={"remedy": "refund", "plan": "basic", "dispute": "overcharge", "failed_identity": "transfer"}),
    Style("brisk", (ItemKind.TOOL, ItemKind.CHAT, ItemKind.FORM, ItemKind.SUBMIT), 0.08, 3,
          defaults={"remedy": "replacement", "plan": "plus", "dispute": "overcharge", "failed_identity": "close"}),
)  # fmt: skip

Choice = list[tuple[Action, float]]
Builder = Callable[[View, Style], Action | Choice]


@dataclass(frozen=True)
class Item:
    """One unit of work on a screen.

    ``applies`` says whether the item is relevant at all in this case (e.g. asking for the order number only
    when the customer did not give it); ``available`` whether what it needs is there yet (e.g. filling the order
    number once the customer has given it); ``done`` whether it has been done; ``after`` names items that must
    be done (or not apply) first. ``optional`` items are done only by some operators. ``guess`` says when the
    item's action would commit to something the customer has not said (a remedy, a plan): operators who do not
    ask do it, and in the calibrated world a reviewer calls it a model error.
    """

    name: str
    kind: ItemKind
    build: Builder
    done: Callable[[View], bool]
    applies: Callable[[View], bool] = lambda view: True
    available: Callable[[View], bool] = lambda view: True
    after: tuple[str, ...] = ()
    optional: bool = False
    guess: Callable[[View], bool] | None = None


@dataclass(frozen=True)
class Screen:
    """The items of one screen, in the order a careful operator would list them."""

    screen_id: str
    items: tuple[Item, ...]

    def guessing(self, view: View) -> frozenset[str]:
        """Names of the items whose action would be a guess in ``view``."""
        return frozenset(it.name for it in self.items if it.guess is not None and it.guess(view))

    def ready(self, view: View) -> list[Item]:
        settled = {it.name for it in self.items if not it.applies(view) or it.done(view)}
        return [
            it
            for it in self.items
            if it.name not in settled and all(dep in settled for dep in it.after) and it.available(view)
        ]


def _as_choice(built: Action | Choice) -> Choice:
    return built if isinstance(built, list) else [(built, 1.0)]


def style_distribution(screen: Screen, view: View, style: Style) -> dict[str, tuple[Action, float, str]]:
    """P(next action | view, style): key -> (action, probability, item name). Empty when nothing is left."""
    ready = screen.ready(view)
    if not ready:
        return {}
    kind_rank = {kind: i for i, kind in enumerate(style.kind_order)}
    # Rank = kind preference first, then the item's position on the screen.
    ordered = sorted(ready, key=lambda it: (kind_rank[it.kind], screen.items.index(it)))
    weights = []
    for rank, item in enumerate(ordered):
        w = math.exp(-style.decisiveness * rank)
        if item.optional:
            w *= style.optional_rate
        weights.append(w)
    total = sum(weights)
    out: dict[str, tuple[Action, float, str]] = {}
    for item, w in zip(ordered, weights, strict=True):
        for action, p in _as_choice(item.build(view, style)):
            key = action_key(action)
            prob = w / total * p
            if key in out:
                prev = out[key]
                out[key] = (prev[0], prev[1] + prob, prev[2])
            else:
                out[key] = (action, prob, item.name)
    return out
