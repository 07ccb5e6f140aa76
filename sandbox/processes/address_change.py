"""Address change with an identity check: date of birth and current postcode are verified against the CRM
before the new address is saved; failed checks go to the security team (or are closed, by some operators)."""

from __future__ import annotations

import random
import re

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
    fill,
    filled,
    greet_item,
    never,
    opening,
    reply_then,
    said,
    say,
    screen,
    submit_button,
    thanks,
    wording_choice,
)
from sandbox.view import CITY_RE, DATE_RE, POSTCODE_RE, STREET_RE, View
from schemas import CloseChat, DateControl, Panel, TextControl, ToolControl, TransferChat

PID = "address_change"
STREETS = ("Oak", "Mill", "Church", "Station", "Park", "Victoria", "Green", "Manor")
SUFFIXES = ("Street", "Road", "Lane", "Avenue", "Way")
CITIES = ("Bradford", "Oxford", "Durham", "Salisbury", "Sheffield", "Stockport", "Manchester", "Blackpool")

ASK_IDENTITY = (
    "For security, could you confirm your date of birth and current postcode?",
    "Before I change anything: what is your date of birth and your current postcode?",
    "Please confirm your date of birth (YYYY-MM-DD) and postcode.",
    "Date of birth and current postcode please.",
)
ASK_ADDRESS = (
    "Thanks, you're verified. What is the new address?",
    "Verified. Please give me the new address with the postcode.",
    "All good. What's your new address?",
    "New address please.",
)
ADDRESS_DONE = (
    "Your address has been updated to {street}, {city}.",
    "Done, {street}, {city} has been saved as your address.",
    "The address change to {street}, {city} is confirmed.",
    "Address updated: {street}, {city}. All set.",
)
FAILED = (
    "I'm sorry, I couldn't verify your identity. I'll transfer you to our security team.",
    "Unfortunately the details don't match our records; a colleague from security will help, transferring now.",
    "The verification failed, so I'm transferring you to a security specialist.",
    "Verification failed, transferring you to security.",
)
FAILED_CLOSE = (
    "I'm sorry, I couldn't verify your identity, so I can't change the address. Please visit a store with ID.",
    "Unfortunately the details don't match our records; please come to a store with your ID.",
    "The verification failed; please bring an ID to one of our stores.",
    "Verification failed; please visit a store with ID.",
)


def _postcode(rng: random.Random) -> str:
    letters = "ABCDEFGHJKLMNPRSTUWYZ"
    return f"{rng.choice(letters)}{rng.choice(letters)}{rng.randint(10, 99)} {rng.randint(1, 9)}{rng.choice(letters)}{rng.choice(letters)}"


def _first(view: View, pattern: re.Pattern[str]) -> str:
    found = pattern.findall(view.customer_text())
    return str(found[0]) if found else ""


def _dob(view: View) -> str:
    return _first(view, DATE_RE)


def _old_postcode(view: View) -> str:
    return _first(view, POSTCODE_RE)


def _new_postcode(view: View) -> str:
    found = POSTCODE_RE.findall(view.customer_text())
    return str(found[-1]) if len(found) > 1 else ""


def verify_identity(crm: CRM, seed: CaseSeed, values: dict[str, object]) -> ToolResult:
    customer = crm.customer(seed.customer_id)
    ok = customer is not None and values.get("dob") == customer.dob and values.get("postcode") == customer.postcode
    return "identity", Panel(title="Identity check", fields={"verified": "yes" if ok else "no"})


def new_case(ctx: CaseContext) -> CaseSeed:
    rng = ctx.rng
    customer = ctx.crm.customer(ctx.customer_id)
    assert customer is not None
    genuine = rng.random() < 0.85
    dob = customer.dob if genuine else f"19{rng.randint(50, 99)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
    street = f"{rng.randint(1, 199)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}"
    city = rng.choice(CITIES)
    new_pc = _postcode(rng)
    gives_id = rng.random() < 0.35
    parts = [
        rng.choice(("Hi,", "Hello,", "")),
        rng.choice(
            ("I moved and need to change my address.", "please update my address", "new address for my account")
        ),
        f"My date of birth is {dob}, postcode {customer.postcode}." if gives_id else "",
    ]
    if genuine:
        truth = {"status": "closed", "codes": ["address_updated"], "fields": {"street": street, "city": city}}
    else:  # either the security team or a closed chat is a correct outcome for a failed check
        truth = {"status": "any", "codes": ["security", "identity_failed"], "fields": {}}
    return CaseSeed(
        customer_id=ctx.customer_id,
        first_message=opening(ctx, parts),
        prefs={},
        truth=truth,
        facts={"dob": dob, "postcode": customer.postcode, "street": street, "city": city, "new_postcode": new_pc},
    )


def _give_identity(seed: CaseSeed, rng: random.Random) -> str:
    return f"My date of birth is {seed.facts['dob']}, postcode {seed.facts['postcode']}."


def _give_address(seed: CaseSeed, rng: random.Random) -> str:
    return f"It's {seed.facts['street']} in {seed.facts['city']}, postcode {seed.facts['new_postcode']}."


def _failed_reply(view: View, style: Style) -> Choice:
    close_it = style.defaults["failed_identity"] == "close"
    return wording_choice(FAILED_CLOSE if close_it else FAILED, style, {})


def _failed_end(view: View, style: Style) -> Choice:
    # What the operator does after a failed check follows what they told the customer.
    if view.said & {"inform_transfer"}:
        return [(TransferChat(queue="security"), 1.0)]
    return [(CloseChat(resolution="identity_failed"), 1.0)]


TIMING = (
    "An address change usually takes effect at once; post goes to {street} from today.",
    "It usually takes effect immediately: {street} from today.",
)


def _timing(view: View, style: Style) -> Choice:
    return wording_choice(TIMING, style, _address_fmt(view))


def _address_fmt(view: View) -> dict[str, str]:
    return {"street": view.panel("case", "street"), "city": view.panel("case", "city")}


SCHEMAS = {
    "ac_identify": screen(
        PID,
        "ac_identify",
        "Verify identity",
        [
            DateControl(id="dob", label="Date of birth", required=True),
            TextControl(id="postcode", label="Current postcode", required=True),
            ToolControl(id="verify_identity", label="Verify", result_panel="identity", required=True),
            submit_button(),
        ],
    ),
    "ac_update": screen(
        PID,
        "ac_update",
        "New address",
        [
            TextControl(id="street", label="Street", required=True),
            TextControl(id="city", label="City", required=True),
            TextControl(id="new_postcode", label="Postcode", required=True),
            submit_button("save", "Save address"),
        ],
    ),
    "ac_done": screen(PID, "ac_done", "Address saved", [], resolutions=("address_updated",)),
    "ac_failed": screen(PID, "ac_failed", "Verification failed", [], ("security",), ("identity_failed",)),
}

PLAYBOOK = {
    "ac_identify": Screen(
        "ac_identify",
        (
            greet_item(),
            Item("ask_identity", ItemKind.CHAT, say(ASK_IDENTITY), said("ask_identity"), applies=lambda v: not _dob(v)),
            Item("dob", ItemKind.FORM, fill("dob", _dob), filled("dob"), available=lambda v: bool(_dob(v))),
            Item(
                "postcode",
                ItemKind.FORM,
                fill("postcode", _old_postcode),
                filled("postcode"),
                available=lambda v: bool(_old_postcode(v)),
            ),
            Item(
                "verify", ItemKind.TOOL, click("verify_identity"), clicked("verify_identity"), after=("dob", "postcode")
            ),
            Item("next", ItemKind.SUBMIT, click("next"), never, after=("verify",)),
        ),
    ),
    "ac_update": Screen(
        "ac_update",
        (
            Item(
                "ask_address",
                ItemKind.CHAT,
                say(ASK_ADDRESS),
                said("ask_new_address"),
                applies=lambda v: not v.mentioned(STREET_RE),
            ),
            Item(
                "street",
                ItemKind.FORM,
                fill("street", lambda v: v.mentioned(STREET_RE) or ""),
                filled("street"),
                available=lambda v: bool(v.mentioned(STREET_RE)),
            ),
            Item(
                "city",
                ItemKind.FORM,
                fill("city", lambda v: v.mentioned(CITY_RE) or ""),
                filled("city"),
                available=lambda v: bool(v.mentioned(CITY_RE)),
            ),
            Item(
                "new_postcode",
                ItemKind.FORM,
                fill("new_postcode", _new_postcode),
                filled("new_postcode"),
                available=lambda v: bool(_new_postcode(v)),
            ),
            Item("save", ItemKind.SUBMIT, click("save"), never, after=("street", "city", "new_postcode")),
        ),
    ),
    "ac_done": Screen(
        "ac_done",
        reply_then(say(ADDRESS_DONE, _address_fmt), "confirm", close(lambda v: "address_updated")),
    ),
    "ac_failed": Screen(
        "ac_failed",
        (
            Item("reply", ItemKind.CHAT, _failed_reply, lambda v: bool(v.said & {"inform_transfer", "other"})),
            Item("end", ItemKind.SUBMIT, _failed_end, never, after=("reply",)),
        ),
    ),
}

SPEC = ProcessSpec(
    process_id=PID,
    title="Address change with identity check",
    bpmn_file="address_change.bpmn",
    schemas=SCHEMAS,
    playbook=PLAYBOOK,
    tools={"verify_identity": verify_identity},
    new_case=new_case,
    replies={"ask_identity": _give_identity, "ask_new_address": _give_address, "confirm": thanks},
    outcome_fields=("street", "city"),
    timing=_timing,
)
