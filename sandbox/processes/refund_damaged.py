"""Refund for a damaged item: find the order, get photo evidence, refund or replace; refunds above the
amount limit (a business rule that a drift scenario changes) go to a senior agent."""

from __future__ import annotations

import random
from datetime import date, timedelta

from sandbox.playbook import Choice, Item, ItemKind, Screen, Style
from sandbox.processes.common import (
    CaseContext,
    CaseSeed,
    ProcessSpec,
    click,
    close,
    fill,
    filled,
    leaning,
    never,
    opening,
    reply_then,
    said,
    say,
    screen,
    select,
    submit_button,
    thanks,
    tick,
    transfer,
    wording_choice,
)
from sandbox.processes.orders import ITEMS, find_order_controls, find_order_items, give_order_id, lookup_order
from sandbox.view import View, similar_word, words_of
from schemas import CheckboxControl, NumberControl, SelectControl

PID = "refund_damaged"
REMEDIES = ("refund", "replacement")

ASK_PHOTO = (
    "Could you send me a photo of the damage, please?",
    "Please attach a photo of the damaged item.",
    "I'll need a photo of the damage to proceed.",
    "Photo of the damage please.",
)
ASK_REMEDY = (
    "Would you prefer a refund or a replacement?",
    "Do you want a refund or a replacement?",
    "We can offer a refund or a replacement, which would you like?",
    "Refund or a replacement?",
)
REFUND_DONE = (
    "Your refund of {amount} has been issued; you'll see it within 5 days.",
    "Done! A refund of {amount} has been issued to your card.",
    "The refund of {amount} has been issued.",
    "Refund of {amount} has been issued.",
)
REPLACEMENT_DONE = (
    "A replacement {item} has been sent out to you.",
    "Good news: a new {item} has been dispatched, it's all set.",
    "Your replacement {item} has been sent.",
    "Replacement {item} has been sent.",
)
SENIOR = (
    "This refund needs approval, so I'm transferring you to a senior colleague.",
    "For this amount a senior colleague has to approve; I'll transfer you now.",
    "I'm transferring you to a specialist who can approve this refund.",
    "Transferring you to a senior colleague for approval.",
)


def _has_photo(view: View) -> bool:
    return view.customer_says("photo", "attached", "picture", "pic ")


def _remedy_from_chat(view: View) -> str | None:
    text = view.customer_text().lower()
    wants_refund = "refund" in text or "money back" in text
    wants_new = "replace" in text or "new one" in text
    if wants_refund and not wants_new:
        return "refund"
    if wants_new and not wants_refund:
        return "replacement"
    return None


def _remedy(view: View, style: Style) -> list[tuple[str, float]]:
    said_remedy = _remedy_from_chat(view)
    if said_remedy is not None:
        return [(said_remedy, 1.0)]
    return leaning(REMEDIES, style.defaults["remedy"], 0.8)  # unclear customer: the operator guesses


TIMING_REFUND = (
    "A refund usually takes 5 working days to reach your card: {amount} for the {item}.",
    "It usually takes 5 working days for the {amount} to reach your card.",
)
TIMING_REPLACEMENT = (
    "The replacement {item} usually takes 3 working days to arrive.",
    "It usually takes 3 working days for the new {item} to arrive.",
)


def _damaged(view: View) -> tuple[str, str]:
    """(item, price) of the damaged item: with several items on the order (calibrated world), the row of the one
    the customer named; otherwise the order's own."""
    panel = view.panels.get("order")
    if panel is not None and panel.rows:
        words = words_of(view.customer_text())
        for row in panel.rows:
            if all(similar_word(w, words) for w in row["item"].split()):
                return row["item"], row["price"]
    return view.panel("order", "item"), view.panel("order", "price")


AMOUNT = ("The amount is {amount} for the {item}.", "The amount is {amount}, for your {item}.")


def _amount(view: View, style: Style) -> Choice:
    item, amount = _damaged(view)
    return wording_choice(AMOUNT, style, {"amount": amount, "item": item})


def _timing(view: View, style: Style) -> Choice:
    item, amount = _damaged(view)
    fmt = {"amount": amount, "item": item}
    refund = view.panel("case", "remedy") == "refund"
    return wording_choice(TIMING_REFUND if refund else TIMING_REPLACEMENT, style, fmt)


REFUND_DONE_ITEM = (
    "Your refund of {amount} for the {item} has been issued; you'll see it within 5 days.",
    "Done! A refund of {amount} for the {item} has been issued to your card.",
    "The refund of {amount} for your {item} has been issued.",
    "Refund of {amount} ({item}) has been issued.",
)


def _done_reply(view: View, style: Style) -> Choice:
    item, amount = _damaged(view)
    refund = view.panel("case", "remedy") == "refund"
    templates = (REFUND_DONE_ITEM if view.world.fact_rich_replies else REFUND_DONE) if refund else REPLACEMENT_DONE
    return wording_choice(templates, style, {"amount": amount, "item": item})


def _other_items(ctx: CaseContext, item: str, price: float) -> list[dict[str, str]]:
    """Calibrated world: most damaged items (85%) came in an order of two or three, listed by the lookup (in any order);
    the refund is the damaged item's price, not the order total."""
    rng = ctx.world_rng
    if not ctx.world.fact_rich_replies or rng.random() >= 0.85:
        return []
    others = rng.sample([i for i in ITEMS if i != item], rng.randint(1, 2))
    lines = [{"item": item, "price": f"{price:.2f}"}]
    lines += [{"item": other, "price": f"{rng.uniform(12, 200):.2f}"} for other in others]
    rng.shuffle(lines)
    return lines


def new_case(ctx: CaseContext) -> CaseSeed:
    rng = ctx.rng
    order_id = ctx.crm.fresh_id("ORD", rng)
    today = date(2026, 11, 1) + timedelta(days=ctx.case_index % 300)
    item = rng.choice(ITEMS)
    price = round(rng.choice((rng.uniform(12, 60), rng.uniform(60, 140), rng.uniform(140, 400))), 2)
    lines = _other_items(ctx, item, price)
    ordered = f"{len(lines)} items" if lines else item
    total = round(sum(float(line["price"]) for line in lines), 2) if lines else price
    ctx.crm.add_order(order_id, ctx.customer_id, ordered, total, "delivered", (today - timedelta(days=2)).isoformat(),
                      "photo", (today - timedelta(days=8)).isoformat(), (today + timedelta(days=357)).isoformat(),
                      lines=lines)  # fmt: skip
    remedy = rng.choice(REMEDIES)
    clarity = rng.random()
    if clarity < 0.55:
        ask = "I'd like a refund." if remedy == "refund" else "Please send a replacement."
        ambiguous = False
    else:  # the customer does not say what they want: genuinely ambiguous until asked
        ask = rng.choice(("What can you do about it?", "Please sort this out.", "Not happy at all."))
        ambiguous = True
    photo = rng.random() < 0.4
    parts = [
        rng.choice(("Hi,", "Hello", "")),
        rng.choice((f"my {item} arrived broken.", f"the {item} is damaged.", f"received a damaged {item}!")),
        f"Order {order_id}." if rng.random() < 0.8 else "",
        "I attached a photo." if photo else "",
        ask,
    ]
    limit = ctx.rules["refund_limit"]
    if remedy == "refund" and price > limit:
        truth = {"status": "transferred", "codes": ["refunds_senior"], "fields": {"remedy": "refund"}}
    else:
        code = "refund_issued" if remedy == "refund" else "replacement_sent"
        truth = {"status": "closed", "codes": [code], "fields": {"remedy": remedy}}
    return CaseSeed(
        customer_id=ctx.customer_id,
        first_message=opening(ctx, parts),
        prefs={"remedy": remedy},
        truth=truth,
        facts={"order_id": order_id},
        ambiguous=ambiguous,
    )


def _give_photo(seed: CaseSeed, rng: random.Random) -> str:
    return rng.choice(("[photo attached]", "here's the picture [photo attached]", "sent the photo"))


def _give_remedy(seed: CaseSeed, rng: random.Random) -> str:
    if seed.prefs["remedy"] == "refund":
        return rng.choice(("A refund please.", "I want my money back.", "refund"))
    return rng.choice(("A replacement please.", "Just send a new one.", "replacement"))


SCHEMAS = {
    "rf_find": screen(PID, "rf_find", "Find the order", find_order_controls()),
    "rf_assess": screen(
        PID,
        "rf_assess",
        "Assess the damage",
        [
            CheckboxControl(id="photo_received", label="Photo evidence received", required=True),
            SelectControl(id="remedy", label="Remedy", options=list(REMEDIES), required=True),
            NumberControl(id="refund_amount", label="Refund amount", minimum=0, maximum=10000),
            submit_button("submit", "Submit"),
        ],
    ),
    "rf_senior": screen(PID, "rf_senior", "Needs approval", [], queues=("refunds_senior",)),
    "rf_confirm": screen(PID, "rf_confirm", "Confirm", [], resolutions=("refund_issued", "replacement_sent")),
}

PLAYBOOK = {
    "rf_find": Screen("rf_find", tuple(find_order_items())),
    "rf_assess": Screen(
        "rf_assess",
        (
            Item("ask_photo", ItemKind.CHAT, say(ASK_PHOTO), said("ask_photo"), applies=lambda v: not _has_photo(v)),
            Item("tick_photo", ItemKind.FORM, tick("photo_received"), filled("photo_received"), available=_has_photo),
            Item(
                "ask_remedy",
                ItemKind.CHAT,
                say(ASK_REMEDY),
                said("ask_remedy"),
                applies=lambda v: _remedy_from_chat(v) is None and not v.filled("remedy"),
                optional=True,
            ),
            Item(
                "remedy",
                ItemKind.FORM,
                select("remedy", _remedy),
                filled("remedy"),
                guess=lambda v: _remedy_from_chat(v) is None,
            ),
            Item(
                "amount",
                ItemKind.FORM,
                fill("refund_amount", lambda v: _damaged(v)[1]),
                filled("refund_amount"),
                applies=lambda v: v.values.get("remedy") == "refund",
                after=("remedy",),
            ),
            Item("submit", ItemKind.SUBMIT, click("submit"), never, after=("tick_photo", "remedy", "amount")),
        ),
    ),
    "rf_senior": Screen(
        "rf_senior",
        reply_then(say(SENIOR), "inform_transfer", transfer("refunds_senior"), end_name="transfer"),
    ),
    "rf_confirm": Screen(
        "rf_confirm",
        (
            *reply_then(
                _done_reply,
                "confirm",
                close(lambda v: "refund_issued" if v.panel("case", "remedy") == "refund" else "replacement_sent"),
            ),
        ),
    ),
}

SPEC = ProcessSpec(
    process_id=PID,
    title="Refund for a damaged item",
    bpmn_file="refund_damaged.bpmn",
    schemas=SCHEMAS,
    playbook=PLAYBOOK,
    tools={"lookup_order": lookup_order},
    new_case=new_case,
    replies={
        "ask_order_id": give_order_id,
        "ask_photo": _give_photo,
        "ask_remedy": _give_remedy,
        "confirm": thanks,
    },
    outcome_fields=("remedy",),
    timing=_timing,
    amount=_amount,
)
