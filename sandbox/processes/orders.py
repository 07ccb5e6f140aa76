"""Finding an order: shared by the processes that start from an order (delivery, refund, warranty)."""

from __future__ import annotations

import random

from sandbox.crm import CRM
from sandbox.playbook import Choice, Item, ItemKind, Style
from sandbox.processes.common import (
    CaseSeed,
    ToolResult,
    click,
    fill,
    greet_item,
    never,
    said,
    say,
    submit_button,
    wording_choice,
)
from sandbox.processes.customers import ASK_RECHECK, WRONG_ORDER, named_items
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


def _rechecks(view: View) -> bool:
    """In the calibrated world customers mistype order numbers, so operators look up the number they were given
    last and ask again when it is not found."""
    return view.world.wrong_id_rate > 0 or view.world.wrong_order_rate > 0


def _typed_current(view: View) -> bool:
    return view.values.get("order_id") == order_id_in_chat(view)


def _looked_up_current(view: View) -> bool:
    return view.panel("order", "order_id") == view.values.get("order_id")


def _order_filled(view: View) -> bool:
    return view.filled("order_id") and (not _rechecks(view) or _typed_current(view))


def _order_looked_up(view: View) -> bool:
    # The number looked up must be the one in the field, and the field the one the customer gave last.
    return "lookup_order" in view.clicked and (
        not _rechecks(view) or (_looked_up_current(view) and _typed_current(view))
    )


def _order_items(view: View) -> list[str]:
    """The items of the order found: its item lines when the lookup lists them (an order of several items),
    else its item field. A table of another kind (a delivery's tracking scans) lists no items."""
    panel = view.panels.get("order")
    lines = [row["item"] for row in panel.rows if row.get("item")] if panel is not None else []
    return lines or [view.panel("order", "item")]


def _wrong_order(view: View) -> bool:
    """The order found is for none of the items the customer wrote about: they quoted another order's number."""
    named = named_items(view.customer_text())
    return bool(named) and not set(named) & set(_order_items(view))


def _order_needs_recheck(view: View) -> bool:
    """The number the customer gave last was looked up and is not their order (not found, or another item's)."""
    if not (_rechecks(view) and _looked_up_current(view) and _typed_current(view)):
        return False
    return view.panel("order", "status") == "not_found" or _wrong_order(view)


def _ask_recheck(view: View, style: Style) -> Choice:
    oid = str(view.values.get("order_id") or "")
    if view.panel("order", "status") == "not_found":
        return wording_choice(ASK_RECHECK, style, {"oid": oid})
    named = named_items(view.customer_text())
    return wording_choice(WRONG_ORDER, style, {"oid": oid, "found": _order_items(view)[0], "wanted": named[0]})


def find_order_items() -> list[Item]:
    """Ask for the order number when the customer did not give it, fill it, look the order up, go on; when the
    lookup finds nothing (a mistyped number, calibrated world), ask the customer to double-check and redo it."""
    return [
        greet_item(),
        Item("ask_order", ItemKind.CHAT, say(ASK_ORDER), said("ask_order_id"), applies=lambda v: not has_order_id(v)),
        Item("fill_order", ItemKind.FORM, fill("order_id", order_id_in_chat), _order_filled, available=has_order_id),
        Item("lookup", ItemKind.TOOL, click("lookup_order"), _order_looked_up, after=("fill_order",)),
        Item(
            "ask_recheck",
            ItemKind.CHAT,
            _ask_recheck,
            said("ask_recheck"),
            applies=_order_needs_recheck,
            after=("lookup",),
        ),
        Item("next", ItemKind.SUBMIT, click("next"), never, after=("lookup", "ask_recheck")),
    ]


def find_order_controls() -> list[Control]:
    return [
        TextControl(id="order_id", label="Order number", required=True, pattern=r"ORD-\d{6}"),
        ToolControl(id="lookup_order", label="Look up order", result_panel="order", required=True),
        submit_button(),
    ]


def lookup_order(crm: CRM, seed: CaseSeed, values: dict[str, object]) -> ToolResult:
    searched = str(values.get("order_id", ""))
    order = crm.order(searched, seed.customer_id)
    if order is None:
        return "order", Panel(title="Order", fields={"order_id": searched, "status": "not_found"})
    return "order", Panel(title="Order", fields=order, rows=crm.lines("orders", searched, seed.customer_id))


def give_order_id(seed: CaseSeed, rng: random.Random) -> str:
    return rng.choice(("It's {}", "sure, {}", "{}", "The number is {}.")).format(seed.facts["order_id"])
