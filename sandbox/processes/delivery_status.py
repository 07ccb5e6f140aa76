"""Delivery-status inquiry: find the order, read its tracking status, tell the customer; lost parcels go to
the logistics team."""

from __future__ import annotations

from datetime import date, timedelta

from sandbox.playbook import Choice, Item, ItemKind, Screen, Style
from sandbox.processes.common import (
    CaseContext,
    CaseSeed,
    ProcessSpec,
    close,
    filled,
    never,
    opening,
    reply_then,
    said,
    say,
    screen,
    select,
    thanks,
    transfer,
    wording_choice,
)
from sandbox.processes.orders import ITEMS, find_order_controls, find_order_items, give_order_id, lookup_order
from sandbox.view import View
from schemas import SelectControl

PID = "delivery_status"
STATUSES = ("in_transit", "delayed", "delivered", "lost")


STATUS_REPLY = (
    "Your order {oid} is on its way and should arrive by {eta}.",
    "Good news: order {oid} is on its way, expected by {eta}.",
    "Order {oid} is on its way. Estimated delivery: {eta}.",
    "{oid} is on its way, ETA {eta}.",
)
DELAYED_REPLY = (
    "I'm sorry, your order {oid} is delayed; the new estimated date is {eta}.",
    "Unfortunately order {oid} is delayed. It should now arrive by {eta}.",
    "Order {oid} is delayed, sorry about that. New ETA: {eta}.",
    "{oid} is delayed, new ETA {eta}.",
)
DELIVERED_REPLY = (
    "Our records show order {oid} was delivered on {eta}.",
    "Tracking says order {oid} was delivered on {eta}.",
    "Order {oid} was delivered on {eta} according to the courier.",
    "{oid} was delivered on {eta}.",
)
LOST_REPLY = (
    "I'm sorry, your parcel seems to be lost. I'll transfer you to a colleague in logistics who will sort it out.",
    "It looks like the parcel went missing; let me transfer you to our logistics specialist.",
    "Sorry, the parcel is lost in transit. A colleague from logistics will take over, I'm transferring you now.",
    "Parcel lost, sorry. I'll transfer you to logistics.",
)


TIMING_STATUS = (
    "It usually takes until {eta} at the latest; the courier texts you on the day.",
    "Delivery usually takes until {eta}, the courier texts you on the day.",
)
TIMING_WAIT = (
    "A parcel marked delivered usually takes up to 24 hours to turn up; if not, write to us again.",
    "It usually takes up to 24 hours for such a parcel to turn up.",
)
TIMING_REDELIVERY = (
    "A redelivery usually takes 2 working days; we'll text you the slot.",
    "The redelivery usually takes 2 working days.",
)


AMOUNT = ("The amount is {price} for the {item}.", "The amount is {price}, paid for your {item}.")


def _amount(view: View, style: Style) -> Choice:
    return wording_choice(AMOUNT, style, {"price": view.panel("order", "price"), "item": view.panel("order", "item")})


def _timing(view: View, style: Style) -> Choice:
    if view.screen_id == "ds_delivered":
        templates = TIMING_WAIT if view.values.get("next_step") == "wait_24h" else TIMING_REDELIVERY
        return wording_choice(templates, style, {})
    return wording_choice(TIMING_STATUS, style, _fmt(view))


# Calibrated world: the lookup lists the parcel's scans, oldest first (two to five of them), and the status reply
# quotes the latest: where it was scanned last, and when. Which row that is depends on the parcel's journey.
HUBS = ("Leeds", "York", "Bristol", "Derby", "Crewe", "Luton", "Exeter", "Hull", "Bath", "Wigan")
SCAN_REPLY = (
    "Your order {oid} is on its way: last scanned in {hub} on {date}, arriving by {eta}.",
    "Good news: order {oid} is on its way, last scanned in {hub} on {date}; expected by {eta}.",
    "Order {oid} is on its way (last scan: {hub}, {date}). Estimated delivery: {eta}.",
    "{oid} is on its way, last scan {hub} {date}, ETA {eta}.",
)
DELIVERED_SCAN_REPLY = (
    "Our records show order {oid} was delivered on {eta}; the last scan was in {hub} on {date}.",
    "Tracking says order {oid} was delivered on {eta} (last scan: {hub}, {date}).",
    "Order {oid} was delivered on {eta} according to the courier, last scanned in {hub} on {date}.",
    "{oid} was delivered on {eta}, last scan {hub} {date}.",
)
DELAYED_SCAN_REPLY = (
    "I'm sorry, your order {oid} is delayed; it was last scanned in {hub} on {date}, new estimated date {eta}.",
    "Unfortunately order {oid} is delayed (last scan: {hub}, {date}). It should now arrive by {eta}.",
    "Order {oid} is delayed, sorry about that; last scanned in {hub} on {date}. New ETA: {eta}.",
    "{oid} is delayed, last scan {hub} {date}, new ETA {eta}.",
)


def _fmt(view: View) -> dict[str, str]:
    fmt = {"oid": view.panel("order", "order_id"), "eta": view.panel("order", "eta")}
    panel = view.panels.get("order")
    if panel is not None and panel.rows:
        fmt |= {"hub": panel.rows[-1].get("hub", ""), "date": panel.rows[-1].get("date", "")}
    return fmt


def _scans(ctx: CaseContext, today: date, status: str) -> list[dict[str, str]]:
    """The parcel's scans, oldest first (calibrated world; none in the classic one or for lost parcels)."""
    if not ctx.world.fact_rich_replies or status == "lost":
        return []
    rng = ctx.world_rng
    hubs = rng.sample(HUBS, rng.randint(2, 5))
    # A delivered parcel's last scan is the delivery (on its delivery date, a day or more ago).
    days = sorted(rng.sample(range(1, 9), len(hubs)), reverse=True)
    if status == "delivered":
        days = [d + 3 for d in days]
    return [{"date": (today - timedelta(days=d)).isoformat(), "hub": h} for d, h in zip(days, hubs, strict=True)]


def _next_step(view: View, style: Style) -> list[tuple[str, float]]:
    # Signed-for parcels: ask the customer to check with neighbours; otherwise book a redelivery.
    return [("wait_24h", 1.0)] if view.panel("order", "proof") == "signature" else [("redelivery", 1.0)]


def new_case(ctx: CaseContext) -> CaseSeed:
    rng = ctx.rng
    status = rng.choices(STATUSES, weights=(0.45, 0.2, 0.25, 0.1))[0]
    order_id = ctx.crm.fresh_id("ORD", rng)
    today = date(2026, 11, 1) + timedelta(days=ctx.case_index % 300)
    eta = (today + timedelta(days=rng.randint(-3, -1) if status == "delivered" else rng.randint(1, 6))).isoformat()
    proof = rng.choice(("signature", "photo")) if status == "delivered" else "none"
    item = rng.choice(ITEMS)
    ctx.crm.add_order(order_id, ctx.customer_id, item, round(rng.uniform(15, 250), 2), status, eta, proof,
                      (today - timedelta(days=10)).isoformat(), (today + timedelta(days=355)).isoformat(),
                      lines=_scans(ctx, today, status))  # fmt: skip
    mention = rng.random() < 0.75
    parts = [
        rng.choice(("Hi,", "Hello.", "hey", "Good morning,", "")),
        rng.choice((
            f"where is my {item}?",
            f"my {item} still hasn't arrived.",
            "I'm waiting for a delivery and have no idea when it comes.",
            "tracking says delivered but I don't have anything!" if status == "delivered" else "any news on my parcel?",
        )),
        f"Order {order_id}." if mention else "",
    ]  # fmt: skip
    if status == "lost":
        truth = {"status": "transferred", "codes": ["logistics"], "fields": {}}
    elif status == "delivered":
        code = "info_given" if proof == "signature" else "redelivery_booked"
        truth = {"status": "closed", "codes": [code], "fields": {}}
    else:
        truth = {"status": "closed", "codes": ["info_given"], "fields": {}}
    return CaseSeed(
        customer_id=ctx.customer_id,
        first_message=opening(ctx, parts),
        prefs={},
        truth=truth,
        facts={"order_id": order_id},
    )


_outcome = ("wait_24h", "redelivery")

SCHEMAS = {
    "ds_find": screen(PID, "ds_find", "Find the order", find_order_controls()),
    "ds_status": screen(PID, "ds_status", "Delivery status", [], resolutions=("info_given",)),
    "ds_delivered": screen(
        PID,
        "ds_delivered",
        "Delivered but not received",
        [SelectControl(id="next_step", label="Next step", options=list(_outcome), required=True)],
        resolutions=("info_given", "redelivery_booked"),
    ),
    "ds_lost": screen(PID, "ds_lost", "Parcel lost", [], queues=("logistics",)),
}


def _delivered_reply(view: View, style: Style) -> Choice:
    scans = bool(view.panels.get("order") and view.panels["order"].rows)
    return wording_choice(DELIVERED_SCAN_REPLY if scans else DELIVERED_REPLY, style, _fmt(view))


def _status_reply(view: View, style: Style) -> Choice:
    delayed = view.panel("order", "status") == "delayed"
    scans = bool(view.panels.get("order") and view.panels["order"].rows)
    with_scans, without = (DELAYED_SCAN_REPLY, DELAYED_REPLY) if delayed else (SCAN_REPLY, STATUS_REPLY)
    templates = with_scans if scans else without
    return wording_choice(templates, style, _fmt(view))


PLAYBOOK = {
    "ds_find": Screen("ds_find", tuple(find_order_items())),
    "ds_status": Screen(
        "ds_status",
        reply_then(_status_reply, "confirm", close(lambda v: "info_given")),
    ),
    "ds_delivered": Screen(
        "ds_delivered",
        (
            Item("reply", ItemKind.CHAT, _delivered_reply, said("confirm")),
            Item("next_step", ItemKind.FORM, select("next_step", _next_step), filled("next_step")),
            Item(
                "close",
                ItemKind.SUBMIT,
                close(lambda v: "info_given" if v.values.get("next_step") == "wait_24h" else "redelivery_booked"),
                never,
                after=("reply", "next_step"),
            ),
        ),
    ),
    "ds_lost": Screen(
        "ds_lost",
        reply_then(say(LOST_REPLY), "inform_transfer", transfer("logistics"), end_name="transfer"),
    ),
}

SPEC = ProcessSpec(
    process_id=PID,
    title="Delivery-status inquiry",
    bpmn_file="delivery_status.bpmn",
    schemas=SCHEMAS,
    playbook=PLAYBOOK,
    tools={"lookup_order": lookup_order},
    new_case=new_case,
    replies={"ask_order_id": give_order_id, "confirm": thanks},
    timing=_timing,
    amount=_amount,
)
