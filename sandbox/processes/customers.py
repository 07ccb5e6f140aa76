"""What customers do beside the process's job, in the calibrated world (``sandbox.world``), and the operator
work items that answer it.

- **A second request** in the opening ("Also, when does my contract end?"): it must be answered before the case
  ends. The answer to the contract question states a fact read from the customer record.
- **A follow-up question** after the confirmation ("Can I get a reference number?", "How long will that
  take?"): answered before closing, with the reference from the record or the process's own timing and facts.
- **A mistyped order number**: the lookup finds nothing, the operator asks the customer to double-check.
- **Another order's number**: the customer quotes one of their other orders; the lookup finds it, but for another
  item than the one they wrote about: the operator asks again.
- **A bad mood**: an upset remark in the opening and impatient endings to replies.
- **Nudges** ("Hello? Are you still there?") while the operator works: they change the screen and ask nothing.

Everything an operator decides here is read from the View: the topic of a question from the customer's words
(typos allowed), whether it was answered from the intents said so far.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

from sandbox.playbook import Builder, Choice, Item, ItemKind, Screen, Style
from sandbox.processes.common import OTHER_INTENTS, CaseSeed, ProcessSpec, wording_choice
from sandbox.view import View, similar_word, words_of
from schemas import ScreenSchema

# Items that close a case: a pending question must be answered before them. A transfer does not wait: the
# specialist who takes the chat over answers it.
END_ITEMS = frozenset({"close", "end"})


@dataclass(frozen=True)
class Topic:
    """A question a customer may ask and how operators answer it: ``cues`` (all of them, typos allowed) find it
    in the customer's words; ``intent`` is the answer's intent; ``templates`` its four wordings."""

    cues: tuple[str, ...]
    intent: str
    templates: tuple[str, ...]
    fmt: Callable[[View], dict[str, str]] = lambda view: {}


# The second requests are the multi-intent sentences of ``OTHER_INTENTS``, in that order.
SECOND_REQUESTS: dict[str, Topic] = {
    "email": Topic(
        ("email",),
        "answer_email",
        (
            "About your email address: you can change it yourself in the app under Settings > Profile.",
            "You can update your email address in the app settings, under Profile.",
            "For the email address, please use the app settings (Profile); it only takes a minute.",
            "Email: app settings > Profile.",
        ),
    ),
    "invoice": Topic(
        ("invoice", "odd"),
        "answer_invoice",
        (
            "I've also flagged your last invoice so our billing team checks it and writes to you.",
            "Your last invoice is flagged for a check by our billing team.",
            "I have flagged the invoice for review; billing will get back to you.",
            "Invoice flagged for billing.",
        ),
    ),
    "contract": Topic(
        ("contract",),
        "answer_contract",
        (
            "Your contract runs until {end}.",
            "Your current contract runs until {end}; after that it renews monthly.",
            "The contract runs until {end}.",
            "Contract runs until {end}.",
        ),
        lambda view: {"end": view.panel("customer", "contract_end")},
    ),
    "app": Topic(
        ("logging",),
        "answer_app",
        (
            "Sorry about the app: please install the latest version, it fixes the log-outs.",
            "The latest version of the app fixes that, please update it.",
            "Updating to the latest version of the app should stop the log-outs.",
            "Please update to the latest version.",
        ),
    ),
}
assert len(SECOND_REQUESTS) == len(OTHER_INTENTS)

FOLLOWUP_QUESTIONS: dict[str, tuple[str, ...]] = {
    "reference": ("Can I get a reference number for this?", "Do I get a reference for this?", "What's my reference?"),
    "confirmation": ("Will I get a confirmation by email?", "Do I get this in writing?", "Will you confirm by email?"),
    "timing": ("How long will that take?", "When will that happen?", "How long does it take?"),
    "amount": ("How much was it again?", "What was the amount?", "How much is that?"),
}
_FOLLOWUP_CUES: dict[str, tuple[str, ...]] = {
    "reference": ("reference",),
    "confirmation": ("by email", "in writing"),
    "timing": ("how long", "when will"),
    "amount": ("how much", "the amount"),
}
FOLLOWUPS: dict[str, Topic] = {
    "reference": Topic(
        (),
        "answer_reference",
        (
            "Your reference number is {ref}.",
            "Sure, the reference number is {ref}.",
            "Of course: reference number {ref}.",
            "Reference number {ref}.",
        ),
        lambda view: {"ref": view.panel("customer", "reference")},
    ),
    "confirmation": Topic(
        (),
        "answer_confirmation",
        (
            "Yes, you'll get the confirmation by email within the hour.",
            "You'll have it in writing by email within the hour.",
            "Yes, an email with the details arrives within the hour.",
            "By email, within the hour.",
        ),
    ),
    "timing": Topic((), "answer_timing", ()),  # worded by the process (ProcessSpec.timing)
    "amount": Topic((), "answer_amount", ()),  # worded by the process (ProcessSpec.amount)
}

UPSET_OPENINGS = (
    "This is the third time I'm writing about this!",
    "I'm really not happy with your service.",
    "Honestly, this is ridiculous.",
)
UPSET_ENDINGS = (" Please hurry up.", " This is taking forever.", " Seriously?")

WRONG_ORDER = (
    "Order {oid} is for a {found}, not the {wanted}; could you double-check the number?",
    "That order ({oid}) is your {found}. Can you double-check the number of the {wanted} order?",
    "I see order {oid} is a {found}; please double-check the number for the {wanted}.",
    "{oid} is a {found}. Please double-check the {wanted} order number.",
)
ASK_RECHECK = (
    "I can't find order {oid}. Could you double-check the number?",
    "There's no order {oid} on your account; can you double-check it?",
    "Order {oid} doesn't show up, please double-check the number.",
    "Not found: {oid}. Please double-check.",
)


# --- what the customer asked --------------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _second_request_in(text: str) -> str | None:
    words = words_of(text)
    for topic, spec in SECOND_REQUESTS.items():
        if all(similar_word(cue, words) for cue in spec.cues):
            return topic
    return None


def second_request_topic(view: View) -> str | None:
    """The topic of the second request in the customer's opening, if there is one."""
    messages = view.customer_messages()
    return _second_request_in(messages[0]) if messages else None


def followup_topic(view: View) -> str | None:
    """The topic of a question the customer asked after their opening (the newest one)."""
    for text in reversed(view.customer_messages()[1:]):
        lowered = text.lower()
        for topic, cues in _FOLLOWUP_CUES.items():
            if any(cue in lowered for cue in cues):
                return topic
    return None


def mistyped(order_id: str, rng: random.Random) -> str:
    """``order_id`` with two adjacent, different digits swapped (the classic typo), or unchanged if none differ."""
    prefix, _, digits = order_id.partition("-")
    pairs = [i for i in range(len(digits) - 1) if digits[i] != digits[i + 1]]
    if not pairs:
        return order_id
    i = rng.choice(pairs)
    return f"{prefix}-{digits[:i]}{digits[i + 1]}{digits[i]}{digits[i + 2 :]}"


def recheck_reply(seed: CaseSeed, rng: random.Random) -> str:
    if seed.facts.get("quoted_other_order"):
        replies: tuple[str, ...] = ("Sorry, wrong one: it's {}.", "Oh, it's {} then.", "My bad, the right one is {}.")
    else:
        replies = ("Sorry, typo: it's {}.", "Oops, it's {}.", "My mistake, {}.")
    return rng.choice(replies).format(seed.facts["order_id"])


def named_items(text: str) -> list[str]:
    """The shop's items ``text`` names (typos allowed), in the order of ``ITEMS``."""
    from sandbox.processes.orders import ITEMS  # here: orders imports this module

    words = words_of(text)
    return [item for item in ITEMS if all(similar_word(w, words) for w in item.split())]


# --- the operator's items -----------------------------------------------------------------------------------


def _answer_second(view: View, style: Style) -> Choice:
    topic = SECOND_REQUESTS[second_request_topic(view) or "email"]
    return wording_choice(topic.templates, style, topic.fmt(view))


def _second_answered(view: View) -> bool:
    topic = second_request_topic(view)
    return topic is None or SECOND_REQUESTS[topic].intent in view.said


def _followup_answered(view: View) -> bool:
    topic = followup_topic(view)
    return topic is None or FOLLOWUPS[topic].intent in view.said


def _answer_followup(worded: dict[str, Builder | None]) -> Builder:
    def build(view: View, style: Style) -> Choice:
        topic = followup_topic(view) or "confirmation"
        by_process = worded.get(topic)
        if by_process is not None:
            built = by_process(view, style)
            return built if isinstance(built, list) else [(built, 1.0)]
        spec = FOLLOWUPS[topic if topic in ("reference", "confirmation") else "confirmation"]
        return wording_choice(spec.templates, style, spec.fmt(view))

    return build


def with_questions(screen: Screen, schema: ScreenSchema, spec: ProcessSpec) -> Screen:
    """``screen`` with the answers to a pending second request and follow-up question, which the items that end
    the case wait for. Screens that do not end a case are returned as they are."""
    if not (schema.resolution_codes or schema.transfer_queues):
        return screen
    answers = (
        Item(
            "answer_second",
            ItemKind.CHAT,
            _answer_second,
            _second_answered,
            applies=lambda v: v.world.answer_second_requests and second_request_topic(v) is not None,
        ),
        Item("answer_followup", ItemKind.CHAT, _answer_followup({"timing": spec.timing, "amount": spec.amount}),
             _followup_answered,
             applies=lambda v: followup_topic(v) is not None),
    )  # fmt: skip
    waits = tuple(a.name for a in answers)
    items: list[Item] = []
    for item in screen.items:
        if item.kind == ItemKind.SUBMIT and item.name in END_ITEMS:
            if answers[0] not in items:  # the answers go just before the first item that ends the case
                items.extend(answers)
            item = replace(item, after=(*item.after, *waits))
        items.append(item)
    return Screen(screen.screen_id, tuple(items))
