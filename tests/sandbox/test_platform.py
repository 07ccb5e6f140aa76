"""The platform on the real BPMN engine: validation, submit rules, gateways, idempotency, ending."""

from __future__ import annotations

import pytest

from sandbox.platform import CaseEnded, CaseNotFound, SandboxPlatform
from sandbox.scenario import SCENARIOS, Drift, Scenario
from sandbox.world import World
from schemas import ActionValidationError, ClickControl, CloseChat, FillField, SelectOption, SendTextToChat

# The engine's mechanics, walked by hand: in the classic world (no tool outages, one item per order).
CLASSIC = World.classic()
CLASSIC_SCENARIO = SCENARIOS["classic"]


def _walk_refund_to_gateway(platform: SandboxPlatform, case_id: str) -> str:
    """Work a refund case by hand up to the amount gateway; return the screen the engine chose."""
    case = platform.case(case_id)
    order_id = case.seed.facts["order_id"]
    platform.apply(case_id, FillField(control_id="order_id", value=order_id))
    platform.apply(case_id, ClickControl(control_id="lookup_order"))
    platform.apply(case_id, ClickControl(control_id="next"))
    assert platform.case(case_id).screen_id == "rf_assess"
    price = platform.observe(case_id).panels["order"].fields["price"]
    platform.apply(case_id, SendTextToChat(text="Please attach a photo of the damaged item."))
    from schemas import ToggleCheckbox

    platform.apply(case_id, ToggleCheckbox(control_id="photo_received", checked=True))
    platform.apply(case_id, SelectOption(control_id="remedy", option="refund"))
    platform.apply(case_id, FillField(control_id="refund_amount", value=price))
    platform.apply(case_id, ClickControl(control_id="submit"))
    return platform.case(case_id).screen_id


def _refund_case_with_price(platform: SandboxPlatform, low: float, high: float) -> str:
    for _ in range(500):
        case_id = platform.open_case("refund_damaged")
        order = platform.crm.order(
            platform.case(case_id).seed.facts["order_id"], platform.case(case_id).seed.customer_id
        )
        assert order is not None
        if low < float(order["price"]) < high:
            return case_id
    raise AssertionError("no case in the price range")


def test_gateway_routes_refunds_above_the_limit_to_a_senior() -> None:
    platform = SandboxPlatform(Scenario(rules={"refund_limit": 150.0}, world=CLASSIC), seed=4)
    above = _refund_case_with_price(platform, 160, 400)
    assert _walk_refund_to_gateway(platform, above) == "rf_senior"
    below = _refund_case_with_price(platform, 10, 140)
    assert _walk_refund_to_gateway(platform, below) == "rf_confirm"


def test_drift_changes_the_business_rule_mid_stream() -> None:
    scenario = Scenario(rules={"refund_limit": 150.0}, drift=Drift(at_case=100, value=60.0), world=CLASSIC)
    assert scenario.rules_at(99)["refund_limit"] == 150.0
    assert scenario.rules_at(100)["refund_limit"] == 60.0
    platform = SandboxPlatform(scenario, seed=4)
    for index in range(100, 600):
        case_id = platform.open_case("refund_damaged", case_index=index)
        case = platform.case(case_id)
        order = platform.crm.order(case.seed.facts["order_id"], case.seed.customer_id)
        assert order is not None
        if 80 < float(order["price"]) < 140:
            assert _walk_refund_to_gateway(platform, case_id) == "rf_senior"  # would be rf_confirm before drift
            return
    raise AssertionError("no case in the price range")


def test_invalid_actions_are_refused_and_change_nothing() -> None:
    platform = SandboxPlatform(CLASSIC_SCENARIO, seed=1)
    case_id = platform.open_case("delivery_status")
    before = platform.observe(case_id)
    with pytest.raises(ActionValidationError) as err:
        platform.apply(case_id, FillField(control_id="order_id", value="12345"))
    assert err.value.field == "value"
    with pytest.raises(ActionValidationError) as err:
        platform.apply(case_id, ClickControl(control_id="no_such_button"))
    assert err.value.field == "control_id"
    with pytest.raises(ActionValidationError) as err:
        platform.apply(case_id, CloseChat(resolution="info_given"))  # not allowed on the first screen
    assert err.value.field == "resolution"
    assert platform.observe(case_id).etag == before.etag


def test_submit_with_missing_required_fields_shows_form_errors() -> None:
    platform = SandboxPlatform(CLASSIC_SCENARIO, seed=1)
    case_id = platform.open_case("delivery_status")
    state = platform.apply(case_id, ClickControl(control_id="next"))
    assert state.screen.screen_id == "ds_find"
    assert state.panels["form_errors"].fields == {"order_id": "required", "lookup_order": "required"}


def test_idempotency_key_applies_once() -> None:
    platform = SandboxPlatform(CLASSIC_SCENARIO, seed=1)
    case_id = platform.open_case("delivery_status")
    action = SendTextToChat(text="What is the order number?")
    first = platform.apply(case_id, action, idempotency_key="k1")
    second = platform.apply(case_id, action, idempotency_key="k1")
    assert first.etag == second.etag and second.step == 1
    assert sum(1 for m in second.chat if m.text == action.text) == 1


def test_customer_answers_a_question_in_the_chat() -> None:
    platform = SandboxPlatform(CLASSIC_SCENARIO, seed=1)
    for _ in range(50):
        case_id = platform.open_case("delivery_status")
        if "ORD-" not in platform.observe(case_id).chat[0].text:
            state = platform.apply(case_id, SendTextToChat(text="What is the order number?"))
            assert platform.case(case_id).seed.facts["order_id"] in state.chat[-1].text
            return
    raise AssertionError("every opening message had an order number")


def test_closed_case_refuses_actions_and_unknown_case_is_reported() -> None:
    platform = SandboxPlatform(CLASSIC_SCENARIO, seed=1)
    case_id = platform.open_case("billing_dispute")
    platform.apply(case_id, SendTextToChat(text="Transferring you to billing."))
    with pytest.raises(ActionValidationError):
        platform.apply(case_id, CloseChat(resolution="x"))
    case = platform.case(case_id)
    platform._end(case, "closed", "x")
    with pytest.raises(CaseEnded):
        platform.apply(case_id, SendTextToChat(text="hello"))
    with pytest.raises(CaseNotFound):
        platform.observe("nope")


def test_unknown_process_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="process_id"):
        SandboxPlatform(CLASSIC_SCENARIO, seed=1).open_case("no_such_process")
    with pytest.raises(ValueError, match="unknown process"):
        Scenario(mix={"no_such_process": 1.0})


@pytest.mark.parametrize(
    ("process_id", "tool"),
    [("account_closure", "lookup_account"), ("address_change", "verify_identity"), ("delivery_status", "lookup_order")],
)
def test_submit_before_the_lookup_is_refused_and_the_case_goes_on(process_id: str, tool: str) -> None:
    """A screen whose gateway reads a lookup result cannot be submitted before the lookup ran."""
    platform = SandboxPlatform(CLASSIC_SCENARIO, seed=2)
    case_id = platform.open_case(process_id)
    screen_id = platform.case(case_id).screen_id
    state = platform.apply(case_id, ClickControl(control_id="next"))
    assert state.screen.screen_id == screen_id
    assert state.panels["form_errors"].fields.get(tool) == "required"
    assert platform.open_tasks(case_id)  # still workable


def test_rejected_open_case_does_not_use_up_an_index() -> None:
    platform = SandboxPlatform(CLASSIC_SCENARIO, seed=1)
    with pytest.raises(ValueError):
        platform.open_case("nope")
    assert platform.open_case("refund_damaged").endswith("-000000")
