"""Tariff / plan change: look up the plans the customer may switch to, select one (asking when the request is
vague), set the effective date, confirm the terms."""

from __future__ import annotations

import random

from sandbox.crm import CRM, PLANS
from sandbox.playbook import Choice, Item, ItemKind, Screen, Style
from sandbox.processes.common import (
    CaseContext,
    CaseSeed,
    ProcessSpec,
    ToolResult,
    click,
    close,
    fill,
    filled,
    leaning,
    lookup_items,
    never,
    opening,
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
from schemas import CheckboxControl, DateControl, Panel, SelectControl, ToolControl

PID = "plan_change"
PLAN_NAMES = tuple(PLANS)

ASK_PLAN = (
    "Sure! Which plan would you like: basic, plus, premium or family?",
    "Which plan would you like to switch to?",
    "We have basic, plus, premium and family. Which plan suits you?",
    "Which plan?",
)
PLAN_DONE = (
    "Your plan has been changed to {plan} from {date}.",
    "Done: you're on {plan} from {date}.",
    "The switch to {plan} is confirmed, effective {date}.",
    "Plan {plan} from {date}, all set.",
)


# Calibrated world: the confirmation states the new monthly fee, read from the row of the plans table that
# lists the chosen plan (which row that is depends on the customer's current plan).
PLAN_DONE_FEE = (
    "Your plan has been changed to {plan} at {fee} a month from {date}.",
    "Done: you're on {plan} ({fee} a month) from {date}.",
    "The switch to {plan} at {fee} per month is confirmed, effective {date}.",
    "Plan {plan}, {fee}/month from {date}, all set.",
)
TIMING = (
    "The change usually takes effect on {date}; your next bill shows {fee} a month.",
    "It usually takes effect on {date}, at {fee} a month.",
)


def _fee(view: View, plan: str) -> str:
    panel = view.panels.get("plans")
    for row in panel.rows if panel is not None else []:
        if row.get("plan") == plan:
            return row.get("monthly_fee", "")
    return ""


def _done_fmt(view: View) -> dict[str, str]:
    plan = view.panel("case", "new_plan")
    return {"plan": plan, "date": view.panel("case", "effective_date"), "fee": _fee(view, plan)}


def _done_reply(view: View, style: Style) -> Choice:
    return wording_choice(PLAN_DONE_FEE if view.world.fact_rich_replies else PLAN_DONE, style, _done_fmt(view))


AMOUNT = ("The amount is {fee} a month for {plan}.", "The amount is {fee} per month on {plan}.")


def _amount(view: View, style: Style) -> Choice:
    return wording_choice(AMOUNT, style, _done_fmt(view))


def _timing(view: View, style: Style) -> Choice:
    return wording_choice(TIMING, style, _done_fmt(view))


def _plan_in_chat(view: View) -> str | None:
    text = view.customer_text().lower()
    named = [p for p in PLAN_NAMES if p in text]
    return named[-1] if named else None


def _plan(view: View, style: Style) -> list[tuple[str, float]]:
    named = _plan_in_chat(view)
    if named is not None:
        return [(named, 1.0)]
    return leaning(PLAN_NAMES, style.defaults["plan"], 0.7)


def lookup_plans(crm: CRM, seed: CaseSeed, values: dict[str, object]) -> ToolResult:
    customer = crm.customer(seed.customer_id)
    current = customer.plan if customer else "unknown"
    fields = {"current_plan": current, "effective_from": seed.facts["effective_from"]}
    rows = [{"plan": p, "monthly_fee": f"{fee:.2f}"} for p, fee in PLANS.items() if p != current]
    return "plans", Panel(title="Plans", fields=fields, rows=rows)


def new_case(ctx: CaseContext) -> CaseSeed:
    rng = ctx.rng
    customer = ctx.crm.customer(ctx.customer_id)
    assert customer is not None
    target = rng.choice([p for p in PLAN_NAMES if p != customer.plan])
    month = 1 + (ctx.case_index // 200) % 12
    effective = f"2027-{month:02d}-01"
    if rng.random() < 0.6:
        ask = rng.choice(
            (f"I want to switch to {target}.", f"please move me to the {target} plan", f"{target} plan pls")
        )
        ambiguous = False
    else:
        ask = rng.choice(("I want a different plan.", "can I change my tariff?", "my plan doesn't fit anymore"))
        ambiguous = True
    parts = [rng.choice(("Hi,", "Hello", "")), ask]
    return CaseSeed(
        customer_id=ctx.customer_id,
        first_message=opening(ctx, parts),
        prefs={"plan": target},
        truth={"status": "closed", "codes": ["plan_changed"], "fields": {"new_plan": target}},
        facts={"effective_from": effective},
        ambiguous=ambiguous,
    )


def _give_plan(seed: CaseSeed, rng: random.Random) -> str:
    return rng.choice(("The {} plan please.", "{}", "I'll take {}.")).format(seed.prefs["plan"])


SCHEMAS = {
    "pc_lookup": screen(
        PID,
        "pc_lookup",
        "Current plan",
        [ToolControl(id="lookup_plans", label="Look up plans", result_panel="plans", required=True), submit_button()],
    ),
    "pc_select": screen(
        PID,
        "pc_select",
        "Choose the new plan",
        [
            SelectControl(id="new_plan", label="New plan", options=list(PLAN_NAMES), required=True),
            DateControl(id="effective_date", label="Effective from", required=True),
            CheckboxControl(id="confirm_terms", label="Customer accepted the terms", required=True),
            submit_button("submit", "Change plan"),
        ],
    ),
    "pc_done": screen(PID, "pc_done", "Plan changed", [], resolutions=("plan_changed",)),
}

PLAYBOOK = {
    "pc_lookup": Screen(
        "pc_lookup",
        lookup_items("lookup_plans"),
    ),
    "pc_select": Screen(
        "pc_select",
        (
            Item(
                "ask_plan",
                ItemKind.CHAT,
                say(ASK_PLAN),
                said("ask_plan"),
                applies=lambda v: _plan_in_chat(v) is None and not v.filled("new_plan"),
                optional=True,
            ),
            Item(
                "plan",
                ItemKind.FORM,
                select("new_plan", _plan),
                filled("new_plan"),
                guess=lambda v: _plan_in_chat(v) is None,
            ),
            Item(
                "date",
                ItemKind.FORM,
                fill("effective_date", lambda v: v.panel("plans", "effective_from")),
                filled("effective_date"),
            ),
            Item("terms", ItemKind.FORM, tick("confirm_terms"), filled("confirm_terms"), after=("plan",)),
            Item("submit", ItemKind.SUBMIT, click("submit"), never, after=("plan", "date", "terms")),
        ),
    ),
    "pc_done": Screen(
        "pc_done",
        (
            Item("reply", ItemKind.CHAT, _done_reply, said("confirm")),
            Item("close", ItemKind.SUBMIT, close(lambda v: "plan_changed"), never, after=("reply",)),
        ),
    ),
}

SPEC = ProcessSpec(
    process_id=PID,
    title="Tariff / plan change",
    bpmn_file="plan_change.bpmn",
    schemas=SCHEMAS,
    playbook=PLAYBOOK,
    tools={"lookup_plans": lookup_plans},
    new_case=new_case,
    replies={"ask_plan": _give_plan, "confirm": thanks},
    outcome_fields=("new_plan",),
    timing=_timing,
    amount=_amount,
)
