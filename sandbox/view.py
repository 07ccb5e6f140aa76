"""What an operator (or a policy) can see of a case at one step, with the facts a human reads off the chat.

Everything here is derived from observable state only: screen values, panels, the chat transcript and the
actions already taken. The operator model decides from a View, which is what makes the sandbox's Bayes ceiling
a statement about the UIState and not about hidden truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher

from sandbox.world import World
from schemas import ChatMessage, ChatRole, Panel

ORDER_RE = re.compile(r"\bORD-?(\d{6})\b", re.IGNORECASE)
INVOICE_RE = re.compile(r"\bINV-?(\d{6})\b", re.IGNORECASE)
DATE_RE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")
POSTCODE_RE = re.compile(r"\b([A-Z]{2}\d{2} ?\d[A-Z]{2})\b")
STREET_RE = re.compile(r"\b(\d{1,3} [A-Z][a-z]+ (?:Street|Road|Lane|Avenue|Way))\b")
CITY_RE = re.compile(r"\bin ([A-Z][a-z]+(?:ton|ford|ham|bury|field|port|chester|pool))\b")

# Operator messages are recognised by their intent: each template of the operator model contains one of these
# markers, and a policy that writes its own text gets credited with the intent whose marker it uses. The first
# group belongs to the calibrated world (sandbox.world); no classic template contains their markers.
INTENT_MARKERS: dict[str, tuple[str, ...]] = {
    "ask_recheck": ("double-check",),
    "ask_dispute": ("charged twice",),
    "ask_repair": ("repair or",),
    "answer_email": ("settings",),
    "answer_invoice": ("flagged",),
    "answer_contract": ("contract runs",),
    "answer_app": ("latest version",),
    "answer_reference": ("reference number",),
    "answer_confirmation": ("within the hour",),
    "answer_timing": ("usually takes",),
    "answer_amount": ("the amount is",),
    "greet": ("thanks for contacting", "thank you for reaching out", "hi there", "hello and welcome"),
    "ask_order_id": ("order number",),
    "ask_invoice_id": ("invoice number",),
    "ask_identity": ("date of birth",),
    "ask_photo": ("photo",),
    "ask_remedy": ("refund or a replacement",),
    "ask_plan": ("which plan",),
    "ask_new_address": ("new address",),
    "offer_retention": ("discount",),
    "inform_transfer": ("specialist", "colleague", "transfer"),
    "confirm": ("done", "confirmed", "all set", "has been", "is on its way", "was delivered", "is delayed"),
}


# What a customer writes while waiting: it changes the screen under a pending proposal (the environment) and
# asks for nothing.
NUDGES = ("Hello? Are you still there?", "Any update?", "Hello??", "I'm still waiting.")


def similar_word(word: str, words: list[str]) -> bool:
    """``word`` or a typo of it (80 % similar, for words of four letters or more) is among ``words``."""
    return any(w == word or (len(word) >= 4 and SequenceMatcher(None, word, w).ratio() >= 0.8) for w in words)


def words_of(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def classify_operator_text(text: str) -> str:
    """The intent of an operator message (first marker that matches, in declaration order), or 'other'."""
    lowered = text.lower()
    for intent, markers in INTENT_MARKERS.items():
        if any(marker in lowered for marker in markers):
            return intent
    return "other"


@dataclass
class View:
    """A case as seen at one step. ``said`` holds the intents of operator messages sent so far."""

    process_id: str
    screen_id: str
    values: dict[str, str | float | bool | None]
    panels: dict[str, Panel]
    chat: list[ChatMessage]
    said: set[str] = field(default_factory=set)
    clicked: set[str] = field(default_factory=set)
    world: World = field(default_factory=World.classic)

    def copy(self) -> View:
        """This view with containers of its own (the case's keep changing), the world included: a reviewer who
        judges the copy later judges it in the same world as the operators did."""
        return replace(
            self,
            values=dict(self.values),
            panels=dict(self.panels),
            chat=list(self.chat),
            said=set(self.said),
            clicked=set(self.clicked),
        )

    def customer_text(self) -> str:
        return "\n".join(m.text for m in self.chat if m.role == ChatRole.CUSTOMER)

    def customer_messages(self) -> list[str]:
        """What the customer wrote, oldest first, without the nudges (which say nothing)."""
        return [m.text for m in self.chat if m.role == ChatRole.CUSTOMER and m.text not in NUDGES]

    def last_customer_text(self) -> str:
        messages = self.customer_messages()
        return messages[-1] if messages else ""

    def panel(self, name: str, key: str, default: str = "") -> str:
        panel = self.panels.get(name)
        return panel.fields.get(key, default) if panel is not None else default

    def filled(self, control_id: str) -> bool:
        value = self.values.get(control_id)
        return value not in (None, "", False)

    def mentioned(self, pattern: re.Pattern[str]) -> str | None:
        """The last match of ``pattern`` in the customer's messages (the newest mention wins)."""
        found = pattern.findall(self.customer_text())
        return found[-1] if found else None

    def customer_says(self, *words: str) -> bool:
        text = self.customer_text().lower()
        return any(word in text for word in words)
