"""Every error mapping of the task API: 422 (with the offending field), 404, 409, idempotency, and no 500s."""

from __future__ import annotations

import random
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sandbox.api import API_PREFIX
from sandbox.platform import SandboxPlatform
from tests.sandbox_api.http_operator import HttpOperator

CASES = f"{API_PREFIX}/cases"


def _action(client: TestClient, case_id: str, action: dict[str, Any], key: str | None = None) -> Any:
    return client.post(f"{CASES}/{case_id}/actions", json={"action": action, "idempotency_key": key})


def _ended_case(operator: HttpOperator) -> str:
    case_id = operator.open("plan_change")
    operator.work(case_id)
    assert operator.status(case_id) == "closed"
    return case_id


# --- 422 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "field"),
    [
        ({"type": "fill_field", "control_id": "no_such_control", "value": "x"}, "control_id"),
        ({"type": "fill_field", "control_id": "order_id", "value": "not-an-order"}, "value"),
        ({"type": "fill_field", "control_id": "next", "value": "x"}, "control_id"),
        ({"type": "toggle_checkbox", "control_id": "order_id", "checked": True}, "control_id"),
        ({"type": "transfer_chat", "queue": "nowhere"}, "queue"),
        ({"type": "close_chat", "resolution": "made_up"}, "resolution"),
    ],
)
def test_action_that_does_not_fit_the_screen(
    action: dict[str, Any], field: str, client: TestClient, operator: HttpOperator
) -> None:
    case_id = operator.open("refund_damaged")
    before = operator.state(case_id)
    response = _action(client, case_id, action)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "action", field]
    assert error["msg"]
    assert operator.state(case_id) == before  # nothing applied


def test_option_that_the_select_does_not_offer(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("refund_damaged")
    operator.work(case_id, until=lambda s: s.screen.screen_id == "rf_assess")
    response = _action(client, case_id, {"type": "select_option", "control_id": "remedy", "option": "a pony"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "action", "option"]
    assert "a pony" in error["msg"]
    assert error["input"] == "a pony"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"action": {"type": "teleport"}},
        {"action": {"type": "fill_field", "control_id": "order_id"}},
        {"action": {"type": "fill_field", "control_id": "order_id", "value": "x", "extra": 1}},
        {"action": {"type": "send_text_to_chat", "text": ""}},
        {"action": {"type": "send_text_to_chat", "text": "hi"}, "idempotencyKey": "k"},
        {"action": {"type": "send_text_to_chat", "text": "hi"}, "idempotency_key": ""},
        {"action": "click next"},
        [1, 2],
    ],
)
def test_malformed_action_body(body: Any, client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("refund_damaged")
    response = client.post(f"{CASES}/{case_id}/actions", json=body)
    assert response.status_code == 422
    assert all(error["loc"][0] == "body" for error in response.json()["detail"])


def test_body_that_is_not_json(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("refund_damaged")
    response = client.post(
        f"{CASES}/{case_id}/actions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    response = client.post(CASES, content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_unknown_process(client: TestClient) -> None:
    response = client.post(CASES, json={"process_id": "time_travel"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "process_id"]
    assert "time_travel" in error["msg"]
    assert client.post(CASES, json={"process_id": 5}).status_code == 422
    assert client.post(CASES, json={"process": "refund_damaged"}).status_code == 422  # typo'd field name
    # A refused create uses up no case index: the seeded stream of cases stays as it was.
    assert client.post(CASES, json={"process_id": "refund_damaged"}).json()["case_id"] == "C11-000000"


def test_complete_with_missing_required_fields(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("refund_damaged")
    [task] = client.get(f"{CASES}/{case_id}/tasks").json()
    before = operator.state(case_id)
    response = client.post(f"{CASES}/{case_id}/tasks/{task['task_id']}/complete")
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["form", "order_id"], ["form", "lookup_order"]]
    after = operator.state(case_id)
    assert after == before  # no step, no form_errors panel: nothing changed
    assert "form_errors" not in after.panels


def test_complete_names_every_missing_field(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("plan_change")
    operator.work(case_id, until=lambda s: s.screen.screen_id == "pc_select")
    [task] = client.get(f"{CASES}/{case_id}/tasks").json()
    tick = {"type": "toggle_checkbox", "control_id": "confirm_terms", "checked": True}
    assert _action(client, case_id, tick).status_code == 200
    response = client.post(f"{CASES}/{case_id}/tasks/{task['task_id']}/complete")
    assert response.status_code == 422
    assert sorted(e["loc"][1] for e in response.json()["detail"]) == ["effective_date", "new_plan"]


# --- 404 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/nope/state"),
        ("GET", "/nope/tasks"),
        ("GET", "/nope/tasks/t1/screen"),
        ("GET", "/nope/outcome"),
        ("POST", "/nope/tasks/t1/complete"),
        ("POST", "/nope/actions"),
    ],
)
def test_unknown_case(method: str, path: str, client: TestClient) -> None:
    body = {"action": {"type": "send_text_to_chat", "text": "hi"}}
    response = client.request(method, f"{CASES}{path}", json=body if method == "POST" else None)
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_unknown_or_done_task_has_no_screen(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("refund_damaged")
    assert client.get(f"{CASES}/{case_id}/tasks/not-a-task/screen").status_code == 404
    [task] = client.get(f"{CASES}/{case_id}/tasks").json()
    operator.work(case_id, until=lambda s: s.screen.screen_id != "rf_find")
    assert client.get(f"{CASES}/{case_id}/tasks/{task['task_id']}/screen").status_code == 404


# --- 409 ------------------------------------------------------------------------------------------------


def test_action_on_an_ended_case(client: TestClient, operator: HttpOperator) -> None:
    case_id = _ended_case(operator)
    response = _action(client, case_id, {"type": "send_text_to_chat", "text": "still there?"})
    assert response.status_code == 409
    assert "ended" in response.json()["detail"]


def test_complete_on_an_ended_case(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("plan_change")
    [task] = client.get(f"{CASES}/{case_id}/tasks").json()
    operator.work(case_id)
    response = client.post(f"{CASES}/{case_id}/tasks/{task['task_id']}/complete")
    assert response.status_code == 409


def test_complete_a_stale_or_unknown_task(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("refund_damaged")
    [task] = client.get(f"{CASES}/{case_id}/tasks").json()
    assert client.post(f"{CASES}/{case_id}/tasks/made-up/complete").status_code == 409
    operator.work(case_id, until=lambda s: s.screen.screen_id != "rf_find")
    step = operator.state(case_id).step
    # A retried completion of a task that is done: refused, and the next task is not completed by mistake.
    response = client.post(f"{CASES}/{case_id}/tasks/{task['task_id']}/complete")
    assert response.status_code == 409
    assert task["task_id"] in response.json()["detail"]
    assert operator.state(case_id).step == step


def test_complete_a_screen_without_submit_button(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("delivery_status")
    state = operator.work(case_id, until=lambda s: s.screen.screen_id != "ds_find")
    assert operator.status(case_id) == "open"
    [task] = client.get(f"{CASES}/{case_id}/tasks").json()
    assert task["name"] == state.screen.screen_id
    response = client.post(f"{CASES}/{case_id}/tasks/{task['task_id']}/complete")
    assert response.status_code == 409
    assert "submit" in response.json()["detail"]
    assert operator.state(case_id).step == state.step


def test_submit_before_the_required_lookup_is_refused(client: TestClient, operator: HttpOperator) -> None:
    # The closure screen's gateway reads the account lookup's result: the lookup is a required control, so
    # completing the task before running it is a 422 naming the lookup, and the case stays workable.
    case_id = operator.open("account_closure")
    [task] = client.get(f"{CASES}/{case_id}/tasks").json()
    first = client.post(f"{CASES}/{case_id}/tasks/{task['task_id']}/complete")
    assert first.status_code == 422, first.text
    assert [e["loc"] for e in first.json()["detail"]] == [["form", "lookup_account"]]
    assert client.get(f"{CASES}/{case_id}/tasks").json() == [task]
    assert client.get(f"{CASES}/{case_id}/state").json()["step"] == 0


# --- idempotency ----------------------------------------------------------------------------------------


def test_same_idempotency_key_applies_once(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("refund_damaged")
    say = {"type": "send_text_to_chat", "text": "Hello, let me check."}
    first = _action(client, case_id, say, key="k-1")
    assert first.status_code == 200
    assert first.json()["step"] == 1
    second = _action(client, case_id, say, key="k-1")
    assert second.status_code == 200
    assert second.json() == first.json()  # the same state: step and chat did not move
    # The key identifies the request, whatever it carries: a different action under a used key applies nothing.
    third = _action(client, case_id, {"type": "fill_field", "control_id": "order_id", "value": "ORD-000001"}, "k-1")
    assert third.json()["step"] == 1
    assert third.json()["values"] == {}
    assert _action(client, case_id, say, key="k-2").json()["step"] == 2


def test_replay_after_the_case_ended_is_not_a_conflict(client: TestClient, operator: HttpOperator) -> None:
    case_id = operator.open("billing_dispute")
    operator.work(case_id, until=lambda s: s.screen.screen_id == "bd_triage")
    transfer = {"type": "transfer_chat", "queue": "billing_specialists"}
    first = _action(client, case_id, transfer, key="transfer-1")
    assert first.status_code == 200
    retry = _action(client, case_id, transfer, key="transfer-1")  # the client lost the first answer
    assert retry.status_code == 200
    assert retry.json()["step"] == first.json()["step"]
    assert _action(client, case_id, transfer, key="transfer-2").status_code == 409


# --- no 500 ---------------------------------------------------------------------------------------------


_JUNK: list[Any] = [None, "", "x", 0, -1, 1e308, True, [], {}, "ORD-000001", "INV-000001", "2024-02-30", "9" * 400]
_TYPES = [
    "fill_field",
    "select_option",
    "toggle_checkbox",
    "click_control",
    "send_text_to_chat",
    "transfer_chat",
    "close_chat",
    "bogus",
]


def _random_action(rng: random.Random, controls: list[str]) -> dict[str, Any]:
    """An action of a random type with random (often ill-typed) fields; control ids mostly from the screen."""
    action: dict[str, Any] = {"type": rng.choice(_TYPES), "control_id": rng.choice([*controls, *controls, *_JUNK])}
    for name in ("value", "option", "checked", "text", "queue", "resolution"):
        if rng.random() < 0.5:
            action[name] = rng.choice(_JUNK)
    return action


def test_random_requests_never_give_a_server_error(app: FastAPI, platform: SandboxPlatform) -> None:
    rng = random.Random(5)
    seen: set[int] = set()
    with TestClient(app, raise_server_exceptions=False) as client:
        operator = HttpOperator(client, platform)
        case_ids = [operator.open(p) for p in ("refund_damaged", "account_closure", "address_change", "plan_change")]
        for _ in range(400):
            case_id = rng.choice([*case_ids, "C11-999999", "%00", "x y"])
            controls = ["x"]
            if case_id in platform.cases:
                case = platform.case(case_id)
                controls = [c.id for c in case.spec.schemas[case.screen_id].controls]
            tasks = client.get(f"{CASES}/{case_id}/tasks")
            ready = tasks.json() if tasks.status_code == 200 else []
            task_id = ready[0]["task_id"] if ready and rng.random() < 0.8 else "t-1"
            key = rng.choice([None, "k", 3])
            method, path, body = rng.choice(
                [
                    (
                        "POST",
                        f"{CASES}/{case_id}/actions",
                        {"action": _random_action(rng, controls), "idempotency_key": key},
                    ),
                    ("POST", f"{CASES}/{case_id}/tasks/{task_id}/complete", None),
                    ("GET", f"{CASES}/{case_id}/tasks/{task_id}/screen", None),
                    ("GET", f"{CASES}/{case_id}/state", None),
                    ("GET", f"{CASES}/{case_id}/outcome", None),
                    ("POST", CASES, {"process_id": rng.choice([None, "refund_damaged", *_JUNK])}),
                ]
            )
            response = client.request(method, path, json=body)
            assert response.status_code < 500, (method, path, body, response.text)
            seen.add(response.status_code)
    assert {200, 201, 404, 409, 422} <= seen  # the walk reached every kind of answer
