"""Account closure with a retention offer. Closing the account is irreversible: the risk configuration marks
it always-ask, so it is never executed without a human."""

from __future__ import annotations

import random

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
    lookup_items,
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
    wording_choice,
)
from sandbox.view import View
from schemas import CheckboxControl, Panel, SelectControl, ToolControl

PID = "account_closure"

OFFER = (
    "Before you go: we can give you a 20% discount for the next 6 months. Would that change your mind?",
    "I can offer a 20% discount for 6 months if you stay. Interested?",
    "As a loyal customer you qualify for a 20% discount for 6 months. Would you like that instead?",
    "We can do a 20% discount for 6 months. Stay?",
)
RETAINED = (
    "Great, the reduced price has been applied to your account.",
    "Wonderful, your new price has been applied. Thanks for staying!",
    "The lower price for 6 months has been applied.",
    "New price has been applied.",
)
CLOSED = (
    "Your account has been closed. Sorry to see you go.",
    "Done, the account has been closed; you'll get a confirmation email.",
    "The account closure has been processed.",
    "Account has been closed.",
)


def lookup_account(crm: CRM, seed: CaseSeed, values: dict[str, object]) -> ToolResult:
    customer = crm.customer(seed.customer_id)
    assert customer is not None
    eligible = customer.tenure_years >= 2 and customer.balance >= 0
    fields = {
        "tenure_years": str(customer.tenure_years),
        "balance": f"{customer.balance:.2f}",
        "retention_eligible": "yes" if eligible else "no",
    }
    return "account", Panel(title="Account", fields=fields)


def close_account(crm: CRM, seed: CaseSeed, values: dict[str, object]) -> ToolResult:
    return "closure", Panel(title="Closure", fields={"status": "closed"})


def _retention(view: View, style: Style) -> list[tuple[str, float]]:
    text = view.last_customer_text().lower()
    accepted = any(w in text for w in ("take the discount", "ok, i'll stay", "sounds good"))
    return [("accepted" if accepted else "declined", 1.0)]


TIMING_RETAINED = (
    "The discount usually takes effect from your next bill.",
    "It usually takes until your next bill for the discount to show.",
)
TIMING_CLOSED = (
    "Closing usually takes one working day; the final bill follows by email.",
    "It usually takes one working day, and the final bill comes by email.",
)


AMOUNT = ("The amount is {balance} on your final bill.", "The amount is {balance}, your final balance.")


def _amount(view: View, style: Style) -> Choice:
    return wording_choice(AMOUNT, style, {"balance": view.panel("account", "balance")})


def _timing(view: View, style: Style) -> Choice:
    return wording_choice(TIMING_RETAINED if view.screen_id == "cl_retained" else TIMING_CLOSED, style, {})


def new_case(ctx: CaseContext) -> CaseSeed:
    rng = ctx.rng
    customer = ctx.crm.customer(ctx.customer_id)
    assert customer is not None
    eligible = customer.tenure_years >= 2 and customer.balance >= 0
    stays = rng.random() < 0.3
    parts = [
        rng.choice(("Hi,", "Hello", "")),
        rng.choice(
            ("I want to close my account.", "please cancel my account", "How do I close my account? Do it now.")
        ),
    ]
    if eligible and stays:
        truth = {"status": "closed", "codes": ["retained"], "fields": {}}
    else:
        truth = {"status": "closed", "codes": ["account_closed"], "fields": {}}
    return CaseSeed(
        customer_id=ctx.customer_id,
        first_message=opening(ctx, parts),
        prefs={"stays": "yes" if stays else "no"},
        truth=truth,
    )


def _answer_offer(seed: CaseSeed, rng: random.Random) -> str:
    if seed.prefs["stays"] == "yes":
        return rng.choice(("OK, I'll take the discount.", "sounds good", "Ok, I'll stay then."))
    return rng.choice(("No thanks, please close it.", "not interested", "No. Close it."))


SCHEMAS = {
    "cl_lookup": screen(
        PID,
        "cl_lookup",
        "Account",
        [
            ToolControl(id="lookup_account", label="Look up account", result_panel="account", required=True),
            submit_button(),
        ],
    ),
    "cl_retention": screen(
        PID,
        "cl_retention",
        "Retention offer",
        [
            SelectControl(id="retention_outcome", label="Offer outcome", options=["accepted", "declined"]),
            submit_button("submit", "Submit"),
        ],
    ),
    "cl_retained": screen(PID, "cl_retained", "Customer retained", [], resolutions=("retained",)),
    "cl_close": screen(
        PID,
        "cl_close",
        "Close the account",
        [
            CheckboxControl(id="confirm_closure", label="Customer confirmed closure", required=True),
            ToolControl(id="close_account", label="Close account (irreversible)", result_panel="closure"),
        ],
        resolutions=("account_closed",),
    ),
}

PLAYBOOK = {
    "cl_lookup": Screen(
        "cl_lookup",
        lookup_items("lookup_account"),
    ),
    "cl_retention": Screen(
        "cl_retention",
        (
            Item("offer", ItemKind.CHAT, say(OFFER), said("offer_retention")),
            Item(
                "outcome",
                ItemKind.FORM,
                select("retention_outcome", _retention),
                filled("retention_outcome"),
                after=("offer",),
            ),
            Item("submit", ItemKind.SUBMIT, click("submit"), never, after=("outcome",)),
        ),
    ),
    "cl_retained": Screen(
        "cl_retained",
        reply_then(say(RETAINED), "confirm", close(lambda v: "retained")),
    ),
    "cl_close": Screen(
        "cl_close",
        (
            Item("confirm", ItemKind.FORM, tick("confirm_closure"), filled("confirm_closure")),
            Item("close_account", ItemKind.TOOL, click("close_account"), clicked("close_account"), after=("confirm",)),
            *reply_then(say(CLOSED), "confirm", close(lambda v: "account_closed"), reply_after=("close_account",)),
        ),
    ),
}

SPEC = ProcessSpec(
    process_id=PID,
    title="Account closure with retention offer",
    bpmn_file="account_closure.bpmn",
    schemas=SCHEMAS,
    playbook=PLAYBOOK,
    tools={"lookup_account": lookup_account, "close_account": close_account},
    new_case=new_case,
    replies={"offer_retention": _answer_offer, "confirm": thanks},
    timing=_timing,
    amount=_amount,
)
