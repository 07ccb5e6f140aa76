"""Regressions of the attack on a running service (issue 17) that a TestClient shows: strict contracts on every
state-changing call, actions checked against the screen of the state they name, copilot feedback only for a
proposal the service issued, one answer protocol with its audit entry, errors (500 with an id, 404 with balanced
quotes), the pages' security headers and the token file the CLI reads. The same tries against a real process are
in test_red_team.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from schemas.decision import Deferral
from schemas.state import UIState
from service.api.app import create_app
from service.api.auth import TokenStore
from service.cli import main
from service.runtime.store import DeferralStatus
from tests.api.conftest import Running, open_case_ids, wait_for
from tests.api.test_api import answer_body, open_cases, pending_deferral, post_answer, start_sessions

pytestmark = pytest.mark.integration

MINE = "address_change"


def suggestion(client: TestClient, running: Running, role: str = "operator") -> tuple[UIState, dict[str, Any]]:
    """A fresh state of one of olga's queues and a proposal issued for it to ``role``."""
    for _ in range(10):
        (case_id,) = open_cases(running, MINE)
        state = running.service.runtime.adapter.observe(case_id)
        response = client.post(
            "/api/v1/copilot/suggest",
            json={"state": state.model_dump(mode="json")},
            headers=running.tokens.header(role),
        )
        assert response.status_code == 200, response.text
        if response.json()["proposal"] is not None:
            return state, response.json()["proposal"]
    pytest.fail("no proposal for 10 fresh cases")


def feedback(client: TestClient, running: Running, body: dict[str, Any], role: str = "operator") -> Any:
    return client.post("/api/v1/copilot/feedback", json=body, headers=running.tokens.header(role))


# ---- finding 8: strict contracts --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, "true", 0, None])
def test_a_boolean_is_never_coerced(client: TestClient, running: Running, value: Any) -> None:
    supervisor = running.tokens.header("supervisor")
    switched = client.put("/api/v1/supervisor/kill-switch", json={"on": value, "reason": "x"}, headers=supervisor)
    assert switched.status_code == 422, switched.text
    assert switched.json()["detail"][0]["loc"] == ["body", "on"]
    assert client.get("/api/v1/supervisor/kill-switch", headers=supervisor).json()["on"] is False
    pinned = client.post(
        f"/api/v1/supervisor/slices/{MINE}/click_control/stage",
        json={"stage": "copilot", "reason": "x", "pin": value},
        headers=supervisor,
    )
    assert pinned.status_code == 422, pinned.text


def test_booleans_inside_payloads_are_strict_too(client: TestClient, running: Running) -> None:
    state, proposal = suggestion(client, running)
    body = state.model_dump(mode="json")
    body.pop("etag")
    body["screen"]["controls"][0]["enabled"] = "yes"
    response = client.post("/api/v1/copilot/suggest", json={"state": body}, headers=running.tokens.header("operator"))
    assert response.status_code == 422 and "enabled" in response.text
    toggle = {"type": "toggle_checkbox", "control_id": "x", "checked": 1}
    response = feedback(
        client,
        running,
        {
            "state": state.model_dump(mode="json"),
            "proposal": proposal,
            "verdict": "correct",
            "corrected_action": toggle,
            "reason": "model_error",
        },
    )
    assert response.status_code == 422 and "checked" in response.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("put", "/api/v1/supervisor/kill-switch", {"on": False, "reason": "x"}),
        ("post", f"/api/v1/supervisor/slices/{MINE}/click_control/stage", {"stage": "copilot", "reason": "x"}),
        ("post", "/api/v1/sessions", {"case_ids": ["c-1"]}),
        ("post", "/api/v1/inbox/d-1/answer", {"proposal_id": "p", "state_etag": "e", "verdict": "accept"}),
    ],
)
def test_unknown_fields_are_refused_on_state_changing_calls(
    client: TestClient, running: Running, method: str, path: str, body: dict[str, Any]
) -> None:
    response = getattr(client, method)(path, json={**body, "sneaky": True}, headers=running.tokens.header("supervisor"))
    assert response.status_code == 422, response.text
    assert any(issue["loc"][-1] == "sneaky" for issue in response.json()["detail"])


# ---- finding 5: an answer names a control the screen does not have ---------------------------------------------


def test_an_answer_whose_action_does_not_fit_the_screen_is_422(client: TestClient, running: Running) -> None:
    (session_id,) = start_sessions(client, running, open_cases(running, MINE))
    deferral: Deferral = pending_deferral(running, session_id)
    bogus = {"type": "click_control", "control_id": "no_such_control"}
    response = post_answer(
        client,
        running,
        deferral.deferral_id,
        answer_body(deferral, "correct", reason="model_error", corrected_action=bogus),
    )
    assert response.status_code == 422, response.text
    issue = response.json()["detail"][0]
    assert issue["loc"] == ["body", "corrected_action", "control_id"] and "no_such_control" in issue["msg"]
    row = running.service.store.get_deferral(deferral.deferral_id)
    assert row is not None and row.status == DeferralStatus.PENDING  # nothing was recorded


# ---- finding 3: one answer protocol, the audit entry with the answer ---------------------------------------------


def test_an_answer_and_its_retry_share_one_audit_entry(client: TestClient, running: Running) -> None:
    (session_id,) = start_sessions(client, running, open_cases(running, MINE))
    deferral = pending_deferral(running, session_id)
    first = post_answer(client, running, deferral.deferral_id, answer_body(deferral))
    assert first.json()["result"] == "accepted", first.text
    retry = post_answer(client, running, deferral.deferral_id, answer_body(deferral))
    assert retry.json()["result"] == "duplicate", retry.text
    entries = [e for e in running.service.store.audit_log(1000) if e.target == deferral.deferral_id]
    assert [(e.actor, e.action) for e in entries] == [("olga", "answer:accept")]
    # The worker resumed the session from the announcement (it no longer records answers itself).
    wait_for(
        lambda: (
            running.service.store.get_session(session_id).step > deferral.proposal.step  # type: ignore[union-attr]
            or running.service.store.get_session(session_id).status.value != "running"
        )
    )  # type: ignore[union-attr]


# ---- finding 4: feedback you can trust ---------------------------------------------------------------------------


def test_feedback_only_for_a_proposal_the_service_issued_to_the_caller(client: TestClient, running: Running) -> None:
    store = running.service.feedback_store
    assert store is not None
    state, proposal = suggestion(client, running)
    base = {"state": state.model_dump(mode="json"), "proposal": proposal}

    made_up = {**proposal, "proposal_id": "made-up-by-the-client"}
    assert feedback(client, running, {**base, "proposal": made_up, "verdict": "accept"}).status_code == 404
    changed = {**proposal, "action": {"type": "click_control", "control_id": proposal["action"].get("control_id", "x")},
               "features": {**proposal["features"], "probability": 0.999}}  # fmt: skip
    assert feedback(client, running, {**base, "proposal": changed, "verdict": "accept"}).status_code == 409
    close = {**proposal, "action": {"type": "close_chat", "resolution": "resolved"}}
    on_no_such_screen = feedback(client, running, {**base, "proposal": close, "verdict": "accept"})
    assert on_no_such_screen.status_code == 422 and on_no_such_screen.json()["detail"][0]["loc"][:2] == [
        "body",
        "proposal",
    ]
    other_state = running.service.runtime.adapter.observe(open_case_ids(running, 1)[0])
    moved = feedback(client, running, {**base, "state": other_state.model_dump(mode="json"), "verdict": "accept"})
    assert moved.status_code == 422 and moved.json()["detail"][0]["loc"] == ["body", "state"]
    bad_fix = {"type": "click_control", "control_id": "no_such_control"}
    wrong_fix = feedback(
        client, running, {**base, "verdict": "correct", "corrected_action": bad_fix, "reason": "model_error"}
    )
    assert wrong_fix.status_code == 422 and wrong_fix.json()["detail"][0]["loc"] == [
        "body",
        "corrected_action",
        "control_id",
    ]
    assert feedback(client, running, {**base, "verdict": "accept"}, role="supervisor").status_code == 403  # not sam's

    first = feedback(client, running, {**base, "verdict": "accept"})
    assert first.status_code == 201, first.text
    again = feedback(client, running, {**base, "verdict": "accept"})  # a retry: the same row
    assert again.status_code == 201 and again.json()["record_id"] == first.json()["record_id"]
    other = feedback(
        client, running, {**base, "verdict": "correct", "corrected_action": proposal["action"], "reason": "model_error"}
    )
    assert other.status_code == 409, other.text
    wait_for(lambda: any(r.record_id == first.json()["record_id"] for r in store.read()))
    assert [r.record_id for r in store.read()].count(first.json()["record_id"]) == 1


def test_feedback_outside_the_callers_queues_is_403(client: TestClient, running: Running) -> None:
    (case_id,) = open_cases(running, "warranty_claim")  # oscar's queue, not olga's
    state = running.service.runtime.adapter.observe(case_id)
    response = client.post(
        "/api/v1/copilot/suggest",
        json={"state": state.model_dump(mode="json")},
        headers=running.tokens.header("operator"),
    )
    proposal = response.json()["proposal"]
    if proposal is None:
        pytest.skip("no proposal for this screen")
    refused = feedback(
        client, running, {"state": state.model_dump(mode="json"), "proposal": proposal, "verdict": "accept"}
    )
    assert refused.status_code == 403 and "queues" in refused.text


# ---- finding 9 (smaller ones): errors, headers, the token file -------------------------------------------------------


def test_an_internal_value_error_is_a_500_with_a_logged_error_id(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(running.service, TokenStore(running.tokens_file, check_interval_s=0.0))

    @app.get("/boom")
    def boom() -> None:
        raise ValueError("state_etag: an internal bug, not the client's input")

    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        response = client.get("/boom")
    assert response.status_code == 500
    error_id = response.json()["error_id"]
    assert "bug" not in response.text
    assert any(error_id in record.getMessage() for record in caplog.records)


def test_404_messages_keep_their_quotes(client: TestClient, running: Running) -> None:
    deferral = post_answer(
        client, running, "no-such-deferral", {"proposal_id": "p", "state_etag": "e", "verdict": "accept"}
    )
    assert deferral.status_code == 404 and deferral.json()["detail"].endswith("'no-such-deferral'"), deferral.text
    case = client.post(
        "/api/v1/sessions", json={"case_ids": ["no-such-case"]}, headers=running.tokens.header("service")
    )
    detail = case.json()["detail"]
    assert case.status_code == 404 and detail.count("'") % 2 == 0, detail


@pytest.mark.parametrize("path", ["/ui/sidebar", "/ui/dashboard"])
def test_pages_send_csp_and_frame_options(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert (
        "default-src 'self'" in csp
        and "frame-ancestors 'none'" in csp
        and "'unsafe-inline'" not in csp.split("style-src")[0]
    )
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_tokens_list_reads_the_file_serve_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AUTOPILOT_TOKENS_FILE", raising=False)
    data_dir = tmp_path / "served"
    assert main(["tokens", "issue", "--name", "ann", "--role", "supervisor", "--data-dir", str(data_dir)]) == 0
    assert (data_dir / "tokens.json").is_file()
    capsys.readouterr()
    monkeypatch.setenv("AUTOPILOT_DATA_DIR", str(data_dir))  # what `autopilot serve` reads without --data-dir
    assert main(["tokens", "list"]) == 0
    out = capsys.readouterr()
    assert [entry["name"] for entry in json.loads(out.out)] == ["ann"]
    assert str(data_dir / "tokens.json") in out.err
