"""The QA queue through the API: a service whose slices are all in autopilot with 90% after-the-fact audits runs
real sessions; their executed audited steps appear in the QA queue of the right operator only, an operator reviews
one (once: a repeat is a duplicate, another verdict 409), the review reaches the guardrails, the audit log and the
feedback store (through the sink), and the supervisor sees the realised error, the QA counts and the blockers.
Refusals: no token 401, the service role 403, another operator's queue 403, unknown 404, bad input 422."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, expect

from schemas import AutonomyStage, SliceKey
from service.runtime.qa_store import QAStatus
from tests.api.conftest import QUEUES, Running, serve, start_service, wait_for
from tests.api.test_pages import browser, login, open_page  # noqa: F401  (browser: a fixture)

pytestmark = pytest.mark.integration

PROCESSES = ("refund_damaged", "address_change", "warranty_claim", "billing_dispute")


@pytest.fixture(scope="module")
def qa_running(tmp_path_factory: pytest.TempPathFactory, broker: Any, models: Any) -> Iterator[Running]:
    started = start_service(
        tmp_path_factory.mktemp("qa-service"),
        broker.bootstrap,
        models,
        audit_rate=0.9,
        initial_stage=AutonomyStage.AUTOPILOT,
        sandbox_cases=0,
    )
    try:
        yield started
    finally:
        started.service.stop()


@pytest.fixture(scope="module")
def qa_client(qa_running: Running) -> Iterator[TestClient]:
    with TestClient(qa_running.app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def reviewed_queues(qa_running: Running, qa_client: TestClient) -> set[str]:
    """Sessions on cases of four processes, until QA items are in an operator's queue and outside it (deferrals stay
    unanswered, so a session that meets a below-threshold step waits there)."""
    platform = qa_running.service.runtime.platform
    assert platform is not None
    cases = [platform.open_case(process_id=p) for p in PROCESSES for _ in range(4)]
    started = qa_client.post("/api/v1/sessions", json={"case_ids": cases}, headers=qa_running.tokens.header("service"))
    assert started.status_code == 202, started.text
    store = qa_running.service.qa.store

    def queues() -> set[str] | None:
        found = {row.item.queue for row in store.items(limit=500)}
        return found if found & set(QUEUES) and found - set(QUEUES) else None

    return wait_for(queues, timeout=120.0, interval=0.2)


def pending(client: TestClient, running: Running, role: str) -> Any:
    response = client.get("/api/v1/qa", headers=running.tokens.header(role))
    assert response.status_code == 200, response.text
    return response.json()


def test_each_operator_sees_the_qa_items_of_their_queues_only(
    qa_client: TestClient, qa_running: Running, reviewed_queues: set[str]
) -> None:
    mine = pending(qa_client, qa_running, "operator")
    assert mine["queues"] == list(QUEUES)
    assert mine["items"] and {i["item"]["queue"] for i in mine["items"]} <= set(QUEUES)
    assert mine["counts"]["pending"] >= len(mine["items"])
    other = pending(qa_client, qa_running, "other_operator")
    assert {i["item"]["queue"] for i in other["items"]} <= {"warranty_claim"}
    everyone = pending(qa_client, qa_running, "supervisor")
    assert everyone["queues"] is None and {i["item"]["queue"] for i in everyone["items"]} == reviewed_queues
    first = mine["items"][0]
    # The item shows what ran and on which state: the executed proposal and the decision that audited it.
    assert first["status"] == "pending" and first["item"]["decision"]["audit"] is True
    assert first["item"]["decision"]["outcome"] == "execute"
    assert first["item"]["proposal"]["state_etag"] == first["item"]["state"]["etag"]
    assert qa_client.get("/api/v1/qa").status_code == 401
    assert qa_client.get("/api/v1/qa", headers=qa_running.tokens.header("service")).status_code == 403
    assert qa_client.get("/api/v1/qa?status=later", headers=qa_running.tokens.header("operator")).status_code == 422


def test_a_review_is_recorded_once_and_feeds_guardrails_log_and_feedback(
    qa_client: TestClient, qa_running: Running, reviewed_queues: set[str]
) -> None:
    service = qa_running.service
    item = pending(qa_client, qa_running, "operator")["items"][0]["item"]
    qa_id = item["qa_id"]
    key = SliceKey.model_validate(item["decision"]["slice"])
    audits_before = service.stages.audited_acceptance(key)
    feedback_store = service.feedback_store
    assert feedback_store is not None
    body = {"proposal_id": item["proposal"]["proposal_id"], "verdict": "reject", "reason": "model_error"}
    headers = qa_running.tokens.header("operator")
    answered = qa_client.post(f"/api/v1/qa/{qa_id}/answer", json=body, headers=headers)
    assert answered.status_code == 200, answered.text
    assert answered.json() == {"result": "accepted", "session_id": item["session_id"], "label": "unacceptable"}
    again = qa_client.post(f"/api/v1/qa/{qa_id}/answer", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    other = {"proposal_id": body["proposal_id"], "verdict": "accept"}
    assert qa_client.post(f"/api/v1/qa/{qa_id}/answer", json=other, headers=headers).status_code == 409
    # Fed to the slice's guardrails once (accepted 0 of 1 more), logged, and a training row for the nightly job.
    accepted, total = service.stages.audited_acceptance(key)
    assert (accepted, total) == (audits_before[0], audits_before[1] + 1)
    log = qa_client.get("/api/v1/supervisor/audit-log", headers=qa_running.tokens.header("supervisor")).json()
    # One entry (the duplicate wrote none), written with the review: who, what, on which slice.
    entries = [e for e in log if e["target"] == qa_id]
    assert [(e["actor"], e["action"]) for e in entries] == [("olga", "qa:reject")]
    assert entries[0]["details"] == {"session_id": item["session_id"], "slice": str(key), "label": "unacceptable"}
    wait_for(lambda: any(r.record_id == f"qa-{qa_id}" for r in feedback_store.read()), timeout=30.0)
    row = service.qa.store.get(qa_id)
    assert row is not None and row.status == QAStatus.ANSWERED
    reviewed = qa_client.get("/api/v1/qa?status=answered", headers=headers).json()
    assert [i["item"]["qa_id"] for i in reviewed["items"]] == [qa_id] and reviewed["items"][0][
        "label"
    ] == "unacceptable"
    # The supervisor's figures: the realised error under both labels, per slice, the QA counts and the blockers.
    summary = qa_client.get("/api/v1/qa/summary", headers=qa_running.tokens.header("supervisor"))
    assert summary.status_code == 200, summary.text
    figures = summary.json()
    assert figures["realised_error"]["errors"] == 1 and figures["realised_error"]["reviewed"] == 1
    assert figures["realised_error"]["high"] > 0.9 and figures["realised_error_accept_label"]["errors"] == 1
    assert any(s["slice"] == str(key) and s["unacceptable"] == 1 for s in figures["slices"])
    assert qa_client.get("/api/v1/qa/summary", headers=headers).status_code == 403
    overview = qa_client.get("/api/v1/supervisor/overview", headers=qa_running.tokens.header("supervisor")).json()
    assert overview["qa"]["answered"] == 1 and overview["qa"]["pending"] >= 1
    blockers = qa_client.get("/api/v1/supervisor/blockers", headers=qa_running.tokens.header("supervisor")).json()
    assert blockers["interrupted"] >= 1 and blockers["blockers"]
    # The deferrals wait for a human (nobody answers them here): below-threshold steps stop these sessions first.
    assert all(b["kind"] in ("deferral", "hand_over", "always_ask") for b in blockers["blockers"])
    assert overview["blockers"] == blockers["blockers"][:10]


def test_qa_refusals(qa_client: TestClient, qa_running: Running, reviewed_queues: set[str]) -> None:
    supervisor_items = pending(qa_client, qa_running, "supervisor")["items"]
    foreign = next(i["item"] for i in supervisor_items if i["item"]["queue"] not in QUEUES)
    mine = next(i["item"] for i in pending(qa_client, qa_running, "operator")["items"])
    headers = qa_running.tokens.header("operator")

    def post(qa_id: str, body: dict[str, Any], role_headers: dict[str, str] = headers) -> Any:
        return qa_client.post(f"/api/v1/qa/{qa_id}/answer", json=body, headers=role_headers)

    accept = {"proposal_id": foreign["proposal"]["proposal_id"], "verdict": "accept"}
    assert post(foreign["qa_id"], accept).status_code == 403  # another queue
    assert post(foreign["qa_id"], accept, {}).status_code == 401
    assert post(foreign["qa_id"], accept, qa_running.tokens.header("service")).status_code == 403
    assert post("qa-unknown", accept).status_code == 404
    own = mine["proposal"]["proposal_id"]
    assert post(mine["qa_id"], {"proposal_id": "another", "verdict": "accept"}).status_code == 409
    bad: list[dict[str, Any]] = [
        {"proposal_id": own, "verdict": "accept", "extra": 1},  # strict body
        {"proposal_id": own, "verdict": "reject"},  # a rejection needs its graded reason
        {"proposal_id": own, "verdict": "maybe"},
        {"proposal_id": own, "verdict": "correct", "reason": "model_error"},  # correct names the action
        {"proposal_id": own, "verdict": "accept", "reason": "model_error"},
        {"verdict": "accept"},
        # a correction naming a control the screen does not have (a training row that could never apply)
        {
            "proposal_id": own,
            "verdict": "correct",
            "reason": "model_error",
            "corrected_action": {"type": "click_control", "control_id": "no_such_control"},
        },
    ]
    for body in bad:
        response = post(mine["qa_id"], body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["detail"][0]["loc"][0] == "body", response.text
    assert post("bad id!", accept).status_code == 422  # the path parameter's pattern
    # None of the refusals answered it.
    row = qa_running.service.qa.store.get(mine["qa_id"])
    assert row is not None and row.status == QAStatus.PENDING


def test_sidebar_qa_tab_and_dashboard_blockers_in_a_browser(
    browser: Browser | None,  # noqa: F811  (the fixture imported above)
    qa_running: Running,
    reviewed_queues: set[str],
) -> None:
    """The operator reviews an executed step in the sidebar's QA tab; the dashboard shows the QA tile (counts and
    realised error) and the ranked blockers."""
    with serve(qa_running.app) as url, open_page(browser) as page:
        login(page, f"{url}/ui/sidebar", qa_running.tokens.operator)
        page.get_by_test_id("tab-qa").click()
        expect(page.locator("#qa-view")).to_be_visible()
        first = page.get_by_test_id("qa-item").first
        expect(first).to_be_visible()
        qa_id = first.get_attribute("data-qa-id")
        assert qa_id
        first.click()
        expect(page.get_by_test_id("qa-action")).not_to_be_empty()
        page.get_by_test_id("qa-ok").click()
        expect(page.get_by_test_id("qa-result")).to_have_attribute("data-label", "acceptable")
        row = qa_running.service.qa.store.get(qa_id)
        assert row is not None and row.status == QAStatus.ANSWERED and row.answer is not None
        assert row.answer.operator_id == "olga"
    with serve(qa_running.app) as url, open_page(browser) as page:
        login(page, f"{url}/ui/dashboard", qa_running.tokens.supervisor)
        expect(page.get_by_test_id("blocker-row").first).to_be_visible()
        answered = qa_running.service.qa.store.counts()["answered"]
        expect(page.get_by_test_id("qa-answered-count")).to_have_text(str(answered))
        expect(page.get_by_test_id("qa-realised-detail")).to_contain_text("95% CI")
