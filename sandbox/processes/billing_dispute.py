"""Billing dispute: find the invoice, classify the dispute, and transfer to the billing specialists (front-line
operators may not settle disputes)."""

from __future__ import annotations

import random

from sandbox.crm import CRM
from sandbox.playbook import Item, ItemKind, Screen, Style
from sandbox.processes.common import (
    CaseContext,
    CaseSeed,
    ProcessSpec,
    ToolResult,
    click,
    clicked,
    fill,
    filled,
    greet_item,
    leaning,
    never,
    opening,
    said,
    say,
    screen,
    select,
    submit_button,
    transfer,
)
from sandbox.view import INVOICE_RE, View, similar_word, words_of
from schemas import Panel, SelectControl, TextareaControl, TextControl, ToolControl

PID = "billing_dispute"
DISPUTES = ("overcharge", "duplicate", "unknown_charge")

ASK_INVOICE = (
    "Could you tell me the invoice number, please?",
    "What is the invoice number?",
    "Please share the invoice number (INV-...).",
    "Invoice number please.",
)
HANDOVER = (
    "Thanks. Billing disputes are handled by our specialist team; I'm transferring you now.",
    "I've noted everything and will transfer you to a billing specialist.",
    "A billing specialist will review this; transferring you now.",
    "Transferring you to billing.",
)


# Calibrated world: the invoice lists its charges, the customer names the one they dispute, and the note for the
# specialist quotes it with its amount from the right row.
CHARGES = ("roaming", "streaming", "insurance", "cloud", "landline")


def _disputed(view: View) -> dict[str, str]:
    panel = view.panels.get("invoice")
    words = words_of(view.customer_text())
    for row in panel.rows if panel is not None else []:
        if row.get("charge") in CHARGES and similar_word(row["charge"], words):
            return {"charge": row["charge"], "amount": row["amount"]}
    return {}


def _charge_note(view: View) -> str:
    charge = _disputed(view)
    return f"Customer disputes the {charge['charge']} charge of {charge['amount']} on {view.panel('invoice', 'invoice_id')}."


def _charges(ctx: CaseContext, amount: float) -> tuple[str, list[dict[str, str]]]:
    """The disputed charge and the invoice's lines (calibrated world; none in the classic one)."""
    rng = ctx.world_rng
    if not ctx.world.fact_rich_replies:
        return "", []
    names = rng.sample(CHARGES, rng.randint(1, 3))
    lines = [{"charge": "plan", "amount": f"{rng.uniform(9, 45):.2f}"}]
    lines += [{"charge": name, "amount": f"{rng.uniform(3, 60):.2f}"} for name in names]
    lines[1]["amount"] = f"{amount:.2f}"
    rng.shuffle(lines)
    return names[0], lines


def _invoice(view: View) -> str:
    digits = view.mentioned(INVOICE_RE)
    return f"INV-{digits}" if digits else ""


ASK_DISPUTE = (
    "To get this right: were you charged twice, charged more than your plan, or is it a charge you don't recognise?",
    "Was it charged twice, more than your plan costs, or a charge you don't recognise?",
    "Can you tell me: charged twice, overcharged, or an unknown charge?",
    "Charged twice, overcharged or unknown?",
)


def _known_dispute(view: View) -> str | None:
    """The dispute type the invoice or the customer's words settle, if any."""
    if view.panel("invoice", "duplicate_of"):
        return "duplicate"
    text = view.customer_text().lower()
    if "twice" in text or "double" in text:
        return "duplicate"
    if "more than" in text or "overcharg" in text or "too much" in text:
        return "overcharge"
    if "recogni" in text or "don't know" in text:
        return "unknown_charge"
    return None


def _dispute(view: View, style: Style) -> list[tuple[str, float]]:
    known = _known_dispute(view)
    if known is not None:
        return [(known, 1.0)]
    return leaning(DISPUTES, style.defaults["dispute"], 0.75)


def _give_dispute(seed: CaseSeed, rng: random.Random) -> str:
    return {
        "overcharge": rng.choice(("It's more than my plan costs.", "I was charged too much.")),
        "duplicate": rng.choice(("I was charged twice.", "It's a double charge.")),
        "unknown_charge": rng.choice(("It's a charge I don't recognise.", "I don't know what that charge is.")),
    }[seed.prefs["dispute"]]


def lookup_invoice(crm: CRM, seed: CaseSeed, values: dict[str, object]) -> ToolResult:
    searched = str(values.get("invoice_id", ""))
    invoice = crm.invoice(searched, seed.customer_id)
    if invoice is None:
        return "invoice", Panel(title="Invoice", fields={"status": "not_found"})
    return "invoice", Panel(title="Invoice", fields=invoice, rows=crm.lines("invoices", searched, seed.customer_id))


def new_case(ctx: CaseContext) -> CaseSeed:
    rng = ctx.rng
    invoice_id = ctx.crm.fresh_id("INV", rng)
    kind = rng.choices(DISPUTES, weights=(0.45, 0.25, 0.3))[0]
    duplicate_of = f"INV-{rng.randrange(10**6):06d}" if kind == "duplicate" and rng.random() < 0.6 else ""
    disputed_amount = round(rng.uniform(20, 300), 2)
    charge, lines = _charges(ctx, disputed_amount)
    total = round(sum(float(line["amount"]) for line in lines), 2) if lines else disputed_amount
    ctx.crm.add_invoice(invoice_id, ctx.customer_id, total, "2026-10", duplicate_of, lines=lines)
    clear = rng.random() < 0.6
    said_kind = {
        "overcharge": "I was charged more than my plan costs.",
        "duplicate": "I was charged twice this month.",
        "unknown_charge": "there's a charge I don't recognise.",
    }[kind]
    parts = [
        rng.choice(("Hi,", "Hello", "")),
        said_kind
        if clear
        else rng.choice(("my bill is wrong.", "something is off with my invoice.", "billing problem")),
        f"Invoice {invoice_id}." if rng.random() < 0.7 else "",
        f"It's about the {charge} charge." if charge else "",
    ]
    return CaseSeed(
        customer_id=ctx.customer_id,
        first_message=opening(ctx, parts),
        prefs={"dispute": kind},
        truth={"status": "transferred", "codes": ["billing_specialists"], "fields": {"dispute_type": kind}},
        facts={"invoice_id": invoice_id},
        ambiguous=not clear and not duplicate_of,
    )


def _give_invoice(seed: CaseSeed, rng: random.Random) -> str:
    return rng.choice(("It's {}", "{}", "invoice {}")).format(seed.facts["invoice_id"])


SCHEMAS = {
    "bd_find": screen(
        PID,
        "bd_find",
        "Find the invoice",
        [
            TextControl(id="invoice_id", label="Invoice number", required=True, pattern=r"INV-\d{6}"),
            ToolControl(id="lookup_invoice", label="Look up invoice", result_panel="invoice", required=True),
            submit_button(),
        ],
    ),
    "bd_triage": screen(
        PID,
        "bd_triage",
        "Classify the dispute",
        [
            SelectControl(id="dispute_type", label="Dispute type", options=list(DISPUTES), required=True),
            TextareaControl(id="note", label="Note for the specialist"),
        ],
        queues=("billing_specialists",),
    ),
}

PLAYBOOK = {
    "bd_find": Screen(
        "bd_find",
        (
            greet_item(),
            Item(
                "ask_invoice",
                ItemKind.CHAT,
                say(ASK_INVOICE),
                said("ask_invoice_id"),
                applies=lambda v: not _invoice(v),
            ),
            Item(
                "fill_invoice",
                ItemKind.FORM,
                fill("invoice_id", _invoice),
                filled("invoice_id"),
                available=lambda v: bool(_invoice(v)),
            ),
            Item("lookup", ItemKind.TOOL, click("lookup_invoice"), clicked("lookup_invoice"), after=("fill_invoice",)),
            Item("next", ItemKind.SUBMIT, click("next"), never, after=("lookup",)),
        ),
    ),
    "bd_triage": Screen(
        "bd_triage",
        (
            Item(
                "ask_dispute",
                ItemKind.CHAT,
                say(ASK_DISPUTE),
                said("ask_dispute"),
                applies=lambda v: (
                    v.world.clarify_everywhere and _known_dispute(v) is None and not v.filled("dispute_type")
                ),
                optional=True,
            ),
            Item(
                "dispute",
                ItemKind.FORM,
                select("dispute_type", _dispute),
                filled("dispute_type"),
                guess=lambda v: _known_dispute(v) is None,
            ),
            Item(
                "note",
                ItemKind.FORM,
                fill("note", lambda v: f"Customer disputes {v.panel('invoice', 'invoice_id')}."),
                filled("note"),
                applies=lambda v: not _disputed(v),
                optional=True,
            ),
            Item(  # calibrated world: the note for the specialist states the disputed charge, read from its row
                "note_charge",
                ItemKind.FORM,
                fill("note", _charge_note),
                filled("note"),
                applies=lambda v: bool(_disputed(v)),
            ),
            Item("handover", ItemKind.CHAT, say(HANDOVER), said("inform_transfer")),
            Item(
                "transfer",
                ItemKind.SUBMIT,
                transfer("billing_specialists"),
                never,
                after=("dispute", "handover"),
            ),
        ),
    ),
}

SPEC = ProcessSpec(
    process_id=PID,
    title="Billing dispute (specialist queue)",
    bpmn_file="billing_dispute.bpmn",
    schemas=SCHEMAS,
    playbook=PLAYBOOK,
    tools={"lookup_invoice": lookup_invoice},
    new_case=new_case,
    replies={"ask_invoice_id": _give_invoice, "ask_dispute": _give_dispute},
    outcome_fields=("dispute_type",),
)
