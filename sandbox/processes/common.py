"""Building blocks shared by the process definitions: the ProcessSpec contract, action builders, wording."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.crm import CRM
from sandbox.playbook import Builder, Choice, Item, ItemKind, Screen, Style
from sandbox.view import View
from sandbox.world import World
from schemas import (
    ButtonControl,
    ChatControl,
    ClickControl,
    CloseChat,
    FillField,
    Panel,
    ScreenSchema,
    SelectOption,
    SendTextToChat,
    ToggleCheckbox,
    TransferChat,
)
from schemas.screen import Control


@dataclass
class CaseSeed:
    """A new case: the customer's opening message, what the customer would answer, and the hidden truth."""

    customer_id: str
    first_message: str
    prefs: dict[str, str]  # hidden customer preferences; revealed only through chat
    truth: dict[str, Any]  # expected outcome: {"status", "codes": [...], "fields": {...}}
    facts: dict[str, str] = field(default_factory=dict)  # what the customer knows (ids, dob, address)
    ambiguous: bool = False


@dataclass(frozen=True)
class CaseContext:
    rng: random.Random
    crm: CRM
    case_index: int
    customer_id: str
    typo_rate: float
    rules: dict[str, float]  # business rules in force for this case (e.g. the refund limit)
    second_request_rate: float = 0.15  # share of openings that add a second, unrelated request
    world: World = field(default_factory=World.classic)
    # The calibrated world's own draws (tables in tool results, ...), so a classic case's draws stay as they were.
    world_rng: random.Random = field(default_factory=random.Random)


ToolResult = tuple[str, Panel]
Tool = Callable[[CRM, CaseSeed, dict[str, Any]], ToolResult]
Reply = Callable[[CaseSeed, random.Random], str]


@dataclass(frozen=True)
class ProcessSpec:
    process_id: str
    title: str
    bpmn_file: str
    schemas: dict[str, ScreenSchema]
    playbook: dict[str, Screen]
    tools: dict[str, Tool]
    new_case: Callable[[CaseContext], CaseSeed]
    replies: dict[str, Reply]  # operator message intent -> customer reply
    outcome_fields: tuple[str, ...] = ()  # form values that are part of the outcome (checked against truth)
    # How an operator answers "how long will that take?" and "how much was it?" after the confirmation (calibrated
    # world); None: the process has no such follow-up.
    timing: Builder | None = None
    amount: Builder | None = None


# --- screens -------------------------------------------------------------------------------------------


def screen(
    process_id: str,
    screen_id: str,
    title: str,
    controls: list[Control],
    queues: tuple[str, ...] = (),
    resolutions: tuple[str, ...] = (),
) -> ScreenSchema:
    return ScreenSchema(
        screen_id=screen_id,
        process_id=process_id,
        title=title,
        controls=[ChatControl(id="chat", label="Chat"), *controls],
        transfer_queues=list(queues),
        resolution_codes=list(resolutions),
    )


def submit_button(control_id: str = "next", label: str = "Next") -> ButtonControl:
    return ButtonControl(id=control_id, label=label, submits=True)


# --- action builders (functions of the View and the operator's style) -----------------------------------


def wording_choice(templates: tuple[str, ...], style: Style, fmt: dict[str, str]) -> Choice:
    """The style's own wording most of the time; other operators' wordings now and then."""
    own = style.wording % len(templates)
    others = len(templates) - 1
    choice: Choice = []
    for i, template in enumerate(templates):
        p = 0.86 if i == own else 0.14 / others
        choice.append((SendTextToChat(text=template.format(**fmt)), p))
    return choice


def say(templates: tuple[str, ...], fmt: Callable[[View], dict[str, str]] | None = None) -> Builder:
    def build(view: View, style: Style) -> Choice:
        return wording_choice(templates, style, fmt(view) if fmt else {})

    return build


def fill(control_id: str, value: Callable[[View], str]) -> Builder:
    return lambda view, style: FillField(control_id=control_id, value=value(view))


def select(control_id: str, options: Callable[[View, Style], list[tuple[str, float]]]) -> Builder:
    def build(view: View, style: Style) -> Choice:
        return [(SelectOption(control_id=control_id, option=o), p) for o, p in options(view, style)]

    return build


def tick(control_id: str) -> Builder:
    return lambda view, style: ToggleCheckbox(control_id=control_id, checked=True)


def click(control_id: str) -> Builder:
    return lambda view, style: ClickControl(control_id=control_id)


def transfer(queue: str) -> Builder:
    return lambda view, style: TransferChat(queue=queue)


def close(resolution: Callable[[View], str]) -> Builder:
    return lambda view, style: CloseChat(resolution=resolution(view))


def leaning(options: tuple[str, ...], preferred: str, confidence: float) -> list[tuple[str, float]]:
    """``preferred`` with probability ``confidence``, the rest spread evenly."""
    rest = (1.0 - confidence) / (len(options) - 1)
    return [(o, confidence if o == preferred else rest) for o in options]


# --- done predicates ------------------------------------------------------------------------------------


def said(intent: str) -> Callable[[View], bool]:
    return lambda view: intent in view.said


def filled(control_id: str) -> Callable[[View], bool]:
    return lambda view: view.filled(control_id)


def clicked(control_id: str) -> Callable[[View], bool]:
    return lambda view: control_id in view.clicked


# --- common items ----------------------------------------------------------------------------------------


def never(view: View) -> bool:
    """The done-predicate of a submit item: doing it leaves the screen, so on the screen it is never done."""
    return False


def reply_then(
    reply: Builder, intent: str, end: Builder, end_name: str = "close", reply_after: tuple[str, ...] = ()
) -> tuple[Item, Item]:
    """The last two items of many screens: tell the customer, then close or transfer the chat."""
    return (
        Item("reply", ItemKind.CHAT, reply, said(intent), after=reply_after),
        Item(end_name, ItemKind.SUBMIT, end, never, after=("reply",)),
    )


def lookup_items(tool_id: str) -> tuple[Item, ...]:
    """A first screen that only needs a lookup: greet (optionally), look up, go on."""
    return (
        greet_item(),
        Item("lookup", ItemKind.TOOL, click(tool_id), clicked(tool_id)),
        Item("next", ItemKind.SUBMIT, click("next"), never, after=("lookup",)),
    )


GREETINGS = (
    "Thanks for contacting us, {name}. Let me look into this for you.",
    "Hi there {name}, happy to help with that.",
    "Thank you for reaching out, {name}. One moment while I check.",
    "Hello and welcome, {name}! I'm on it.",
)


def greet_item() -> Item:
    def fmt(view: View) -> dict[str, str]:
        return {"name": view.panel("customer", "name").split(" ")[0]}

    return Item("greet", ItemKind.CHAT, say(GREETINGS, fmt), said("greet"), optional=True)


CONFIRM_THANKS = ("Thanks!", "Great, thank you.", "ok thanks", "Perfect, thanks a lot.")


def thanks(seed: CaseSeed, rng: random.Random) -> str:
    return rng.choice(CONFIRM_THANKS)


# --- customer wording ------------------------------------------------------------------------------------

_KEYBOARD_NEIGHBOURS = "qwertyuiopasdfghjklzxcvbnm"


def typo(text: str, rng: random.Random, rate: float) -> str:
    """Swap or drop letters inside words at ``rate`` per word; never inside ids, dates or amounts."""
    words = text.split(" ")
    out = []
    for word in words:
        if len(word) > 3 and word.isalpha() and rng.random() < rate:
            i = rng.randrange(1, len(word) - 1)
            if rng.random() < 0.5:
                word = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
            else:
                word = word[:i] + rng.choice(_KEYBOARD_NEIGHBOURS) + word[i + 1 :]
        out.append(word)
    return " ".join(out)


OTHER_INTENTS = (
    "Also, can you update my email address?",
    "And by the way, my last invoice looked odd too.",
    "Also when does my contract end?",
    "Btw your app keeps logging me out.",
)


def opening(ctx: CaseContext, parts: list[str]) -> str:
    """Join the parts of an opening message, sometimes add a second, unrelated request, and add typos."""
    text = " ".join(p for p in parts if p)
    if ctx.rng.random() < ctx.second_request_rate:
        text = f"{text} {ctx.rng.choice(OTHER_INTENTS)}"
    return typo(text, ctx.rng, ctx.typo_rate)
