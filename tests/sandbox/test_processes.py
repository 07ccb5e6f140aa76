"""The process definitions: BPMN models parse in the real engine, screens and playbooks agree, wording is
recognised by intent."""

from __future__ import annotations

import re

import pytest
from SpiffWorkflow.bpmn.specs.defaults import UserTask

from sandbox.processes.registry import PROCESSES, workflow_spec
from sandbox.view import classify_operator_text


@pytest.mark.parametrize("process_id", sorted(PROCESSES))
def test_bpmn_user_tasks_are_the_screens(process_id: str) -> None:
    spec = PROCESSES[process_id]
    engine_spec = workflow_spec(process_id)
    user_tasks = {name for name, task in engine_spec.task_specs.items() if isinstance(task, UserTask)}
    assert user_tasks == set(spec.schemas) == set(spec.playbook)
    for screen_id, schema in spec.schemas.items():
        assert schema.process_id == process_id and schema.screen_id == screen_id


def test_at_least_six_processes_with_transfers_tools_and_closing() -> None:
    assert len(PROCESSES) >= 6
    queues = {q for p in PROCESSES.values() for s in p.schemas.values() for q in s.transfer_queues}
    codes = {c for p in PROCESSES.values() for s in p.schemas.values() for c in s.resolution_codes}
    tools = {t for p in PROCESSES.values() for t in p.tools}
    assert {"billing_specialists", "refunds_senior", "logistics", "security"} <= queues
    assert {"account_closed", "refund_issued", "plan_changed", "address_updated"} <= codes
    assert {"lookup_order", "verify_identity", "lookup_plans", "lookup_account", "close_account"} <= tools


def _templates(module: object) -> dict[str, tuple[str, ...]]:
    return {
        name: value
        for name, value in vars(module).items()
        if re.fullmatch(r"[A-Z_]+", name) and isinstance(value, tuple) and value and isinstance(value[0], str)
    }


EXPECTED_INTENT = {
    "ASK_ORDER": "ask_order_id",
    "ASK_INVOICE": "ask_invoice_id",
    "ASK_IDENTITY": "ask_identity",
    "ASK_PHOTO": "ask_photo",
    "ASK_REMEDY": "ask_remedy",
    "ASK_PLAN": "ask_plan",
    "ASK_ADDRESS": "ask_new_address",
    "OFFER": "offer_retention",
    "GREETINGS": "greet",
    "LOST_REPLY": "inform_transfer",
    "SENIOR": "inform_transfer",
    "HANDOVER": "inform_transfer",
    "FAILED": "inform_transfer",
    "FAILED_CLOSE": "other",
}
CONFIRMATIONS = {
    "STATUS_REPLY",
    "DELAYED_REPLY",
    "DELIVERED_REPLY",
    "REFUND_DONE",
    "REPLACEMENT_DONE",
    "ADDRESS_DONE",
    "PLAN_DONE",
    "RETAINED",
    "CLOSED",
    "ACCEPTED",
    "REJECTED",
}


def test_every_reply_template_is_recognised_as_its_intent() -> None:
    import importlib

    modules = [importlib.import_module(f"sandbox.processes.{pid}") for pid in PROCESSES]
    modules += [
        importlib.import_module("sandbox.processes.common"),
        importlib.import_module("sandbox.processes.orders"),
    ]
    checked = 0
    for module in modules:
        for name, templates in _templates(module).items():
            expected = EXPECTED_INTENT.get(name, "confirm" if name in CONFIRMATIONS else None)
            if expected is None:
                continue
            for template in templates:
                text = template.format_map(_Blank())
                assert classify_operator_text(text) == expected, (module.__name__, name, text)
                checked += 1
    assert checked >= 80


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "X1"


def test_default_risk_policy_keeps_irreversible_actions_with_a_human() -> None:
    from sandbox.risk import DEFAULT_RISK_POLICY
    from schemas import ActionType, RiskTier

    tier = DEFAULT_RISK_POLICY.tier_for
    assert tier("account_closure", ActionType.CLICK_CONTROL, "close_account") == RiskTier.ALWAYS_ASK
    assert tier("account_closure", ActionType.SEND_TEXT_TO_CHAT) == RiskTier.ALWAYS_ASK
    assert tier("account_closure", ActionType.CLICK_CONTROL, "lookup_account") == RiskTier.NON_CRITICAL
    assert tier("refund_damaged", ActionType.CLOSE_CHAT) == RiskTier.CRITICAL
    for override in DEFAULT_RISK_POLICY.overrides:  # every override names a real control of its process
        if override.control_id is None:
            continue
        screens = [s for p in PROCESSES.values() for s in p.schemas.values()]
        assert any(s.control(override.control_id) for s in screens), override
