"""Warranty claim: a rare process (the long tail, or held out as 'new'): find the order, check the warranty,
decide repair / replace / reject."""

from __future__ import annotations

import random
from datetime import date, timedelta

from sandbox.crm import CRM
from sandbox.playbook import Choice, Item, ItemKind, Screen, Style
from sandbox.processes.common import (
    CaseContext,
    CaseSeed,
    ProcessSpec,
    ToolResult,
    click,
    clicked,
    close,
    filled,
    leaning,
    never,
    opening,
    reply_then,
    said,
    say,
    screen,
    select,
    thanks,
    wording_choice,
)
from sandbox.processes.orders import ITEMS, find_order_controls, find_order_items, give_order_id, lookup_order
from sandbox.view import View
from schemas import Panel, SelectControl, ToolControl

PID = "warranty_claim"
DECISIONS = ("repair", "replace", "reject")

ACCEPTED = (
    "Your claim is confirmed: we'll {decision} the {item} free of charge.",
    "Good news, the warranty covers it and we'll {decision} your {item}. It's all set.",
    "The claim has been accepted; we will {decision} the {item}.",
    "Claim has been accepted, we'll {decision} it.",
)
REJECTED = (
    "I'm sorry, the warranty on your {item} has expired, so the claim has been declined.",
    "Unfortunately the {item} is out of warranty; the claim has been declined.",
    "The warranty period is over, so the claim has been declined.",
    "Out of warranty, claim has been declined.",
)


def check_warranty(crm: CRM, seed: CaseSeed, values: dict[str, object]) -> ToolResult:
    order = crm.order(str(values.get("order_id", "")), seed.customer_id)
    if order is None:
        return "warranty", Panel(title="Warranty", fields={"status": "not_found"})
    covered = order["warranty_until"] >= seed.facts["today"]
    return "warranty", Panel(
        title="Warranty", fields={"covered": "yes" if covered else "no", "until": order["warranty_until"]}
    )


ASK_REPAIR = (
    "The warranty covers it: would you like a repair or a replacement?",
    "Would you prefer a repair or a replacement?",
    "Shall we repair or replace it?",
    "Repair or replace?",
)
TIMING_ACCEPTED = (
    "A {decision} usually takes 10 working days; a courier collects the {item}.",
    "It usually takes 10 working days to {decision} the {item}.",
)
TIMING_REJECTED = (
    "An appeal usually takes 14 days if you want to send one.",
    "If you appeal, it usually takes 14 days to hear back.",
)


def _wanted(view: View) -> str | None:
    """What the customer asked for, if they said it."""
    text = view.customer_text().lower()
    if "repair" in text or "fix" in text:
        return "repair"
    if "new one" in text or "replace" in text:
        return "replace"
    return None


def _open_choice(view: View) -> bool:
    """Covered, and the customer has not said whether they want a repair or a new one: nothing decides it."""
    return view.panel("warranty", "covered") == "yes" and _wanted(view) is None


def _decision(view: View, style: Style) -> list[tuple[str, float]]:
    if view.panel("warranty", "covered") != "yes":
        return [("reject", 1.0)]
    wanted = _wanted(view)
    if wanted is not None:
        return [(wanted, 1.0)]
    preferred = "repair" if style.defaults["remedy"] == "refund" else "replace"
    return leaning(DECISIONS[:2], preferred, 0.8)


def _reply(view: View, style: Style) -> Choice:
    decision = str(view.values.get("claim_decision") or "")
    fmt = {"decision": decision, "item": view.panel("order", "item")}
    return wording_choice(REJECTED if decision == "reject" else ACCEPTED, style, fmt)


AMOUNT = ("The amount is {price} for the {item}.", "The amount is {price}, what you paid for the {item}.")


def _amount(view: View, style: Style) -> Choice:
    return wording_choice(AMOUNT, style, {"price": view.panel("order", "price"), "item": view.panel("order", "item")})


def _timing(view: View, style: Style) -> Choice:
    decision = str(view.values.get("claim_decision") or "")
    templates = TIMING_REJECTED if decision == "reject" else TIMING_ACCEPTED
    return wording_choice(templates, style, {"decision": decision, "item": view.panel("order", "item")})


def _give_choice(seed: CaseSeed, rng: random.Random) -> str:
    if seed.prefs["decision"] == "repair":
        return rng.choice(("Please repair it.", "A repair is fine.", "repair please"))
    return rng.choice(("I'd like a new one.", "Please replace it, a new one.", "new one please"))


def new_case(ctx: CaseContext) -> CaseSeed:
    rng = ctx.rng
    order_id = ctx.crm.fresh_id("ORD", rng)
    today = date(2026, 11, 1) + timedelta(days=ctx.case_index % 300)
    purchased = today - timedelta(days=rng.randint(60, 900))
    until = purchased + timedelta(days=730)
    item = rng.choice(ITEMS)
    ctx.crm.add_order(order_id, ctx.customer_id, item, round(rng.uniform(40, 400), 2), "delivered",
                      purchased.isoformat(), "signature", purchased.isoformat(), until.isoformat())  # fmt: skip
    wants = rng.choice(("repair", "replace"))
    clear = rng.random() < 0.6
    parts = [
        rng.choice(("Hi,", "Hello", "")),
        f"my {item} stopped working.",
        f"Order {order_id}." if rng.random() < 0.8 else "",
        ("Can you repair it?" if wants == "repair" else "I want a new one.") if clear else "",
    ]
    covered = until >= today
    if covered:
        truth = {"status": "closed", "codes": ["claim_accepted"], "fields": {"claim_decision": wants}}
    else:
        truth = {"status": "closed", "codes": ["claim_rejected"], "fields": {"claim_decision": "reject"}}
    return CaseSeed(
        customer_id=ctx.customer_id,
        first_message=opening(ctx, parts),
        prefs={"decision": wants},
        truth=truth,
        facts={"order_id": order_id, "today": today.isoformat()},
        ambiguous=covered and not clear,
    )


_find_items = [
    *find_order_items()[:-1],
    Item(
        "warranty", ItemKind.TOOL, click("check_warranty"), clicked("check_warranty"), after=("lookup", "ask_recheck")
    ),
    Item("next", ItemKind.SUBMIT, click("next"), never, after=("warranty",)),
]

SCHEMAS = {
    "wc_find": screen(
        PID,
        "wc_find",
        "Find the order",
        [
            *find_order_controls(),
            ToolControl(id="check_warranty", label="Check warranty", result_panel="warranty", required=True),
        ],
    ),
    "wc_decide": screen(
        PID,
        "wc_decide",
        "Decide the claim",
        [SelectControl(id="claim_decision", label="Decision", options=list(DECISIONS), required=True)],
        resolutions=("claim_accepted", "claim_rejected"),
    ),
}

PLAYBOOK = {
    "wc_find": Screen("wc_find", tuple(_find_items)),
    "wc_decide": Screen(
        "wc_decide",
        (
            Item(
                "ask_repair",
                ItemKind.CHAT,
                say(ASK_REPAIR),
                said("ask_repair"),
                applies=lambda v: v.world.clarify_everywhere and _open_choice(v) and not v.filled("claim_decision"),
                optional=True,
            ),
            Item(
                "decision",
                ItemKind.FORM,
                select("claim_decision", _decision),
                filled("claim_decision"),
                guess=_open_choice,
            ),
            *reply_then(
                _reply,
                "confirm",
                close(lambda v: "claim_rejected" if v.values.get("claim_decision") == "reject" else "claim_accepted"),
                reply_after=("decision",),
            ),
        ),
    ),
}

SPEC = ProcessSpec(
    process_id=PID,
    title="Warranty claim (long tail)",
    bpmn_file="warranty_claim.bpmn",
    schemas=SCHEMAS,
    playbook=PLAYBOOK,
    tools={"lookup_order": lookup_order, "check_warranty": check_warranty},
    new_case=new_case,
    replies={"ask_order_id": give_order_id, "ask_repair": _give_choice, "confirm": thanks},
    outcome_fields=("claim_decision",),
    timing=_timing,
    amount=_amount,
)
