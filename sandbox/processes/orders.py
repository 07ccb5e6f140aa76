"""Finding an order: shared by the processes that start from an order (delivery, refund, warranty)."""

from __future__ import annotations

import random

from sandbox.crm import CRM
from sandbox.playbook import Item, ItemKind
from sandbox.processes.common import (
    CaseSeed,
    ToolResult,
    click,
    clicked,
    fill,
    filled,
    greet_item,
    never,
    said,
    say,
    submit_button,
)
from sandbox.view import ORDER_RE, View
from schemas import Panel, TextControl, ToolControl
from schemas.screen import Control

ITEMS = ("headphones", "coffee machine", "desk lamp", "running shoes", "phone case", "blender", "backpack")

ASK_ORDER = (
    "Could you give me your order number, please?",
    "What is the order number?",
    "Please share the order number so I can check.",
    "Can I have your order number (it starts with ORD)?",
)


def order_id_in_chat(view: View) -> str:
    digits = view.mentioned(ORDER_RE)
    return f"ORD-{digits}" if digits else ""


def has_order_id(view: View) -> bool:
    return bool(order_id_in_chat(view))


def find_order_items() -> list[Item]:
    """Ask for the order number when the customer did not give it, fill it, look the order up, go on."""
    return [
        greet_item(),
        Item("ask_order", ItemKind.CHAT, say(ASK_ORDER), said("ask_order_id"), applies=lambda v: not has_order_id(v)),
        Item(
            "fill_order", ItemKind.FORM, fill("order_id", order_id_in_chat), filled("order_id"), available=has_order_id
        ),
        Item("lookup", ItemKind.TOOL, click("lookup_order"), clicked("lookup_order"), after=("fill_order",)),
        Item("next", ItemKind.SUBMIT, click("next"), never, after=("lookup",)),
    ]


def find_order_controls() -> list[Control]:
    return [
        TextControl(id="order_id", label="Order number", required=True, pattern=r"ORD-\d{6}"),
        ToolControl(id="lookup_order", label="Look up order", result_panel="order", required=True),
        submit_button(),
    ]


def lookup_order(crm: CRM, seed: CaseSeed, values: dict[str, object]) -> ToolResult:
    order = crm.order(str(values.get("order_id", "")), seed.customer_id)
    return "order", Panel(title="Order", fields=order or {"status": "not_found"})


def give_order_id(seed: CaseSeed, rng: random.Random) -> str:
    return rng.choice(("It's {}", "sure, {}", "{}", "The number is {}.")).format(seed.facts["order_id"])
