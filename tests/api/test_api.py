"""The API end to end on one started service: copilot suggest and feedback, background sessions deferring to the
inbox, answering (accept, duplicate, stale, unknown, forbidden, invalid), stopping, the supervisor's stages, pins
and kill switch, the audit log, the inbox as server-sent events, the probes and the metrics."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from schemas.actions import validate_action
from schemas.decision import Decision, Deferral
from schemas.proposal import Proposal
from schemas.state import UIState
from service.runtime.store import DeferralStatus
from tests.api.conftest import QUEUES, Running, wait_for

pytestmark = pytest.mark.integration

# Queue = process id. Of olga's QUEUES only "address_change" is a sandbox process ("refund_request" is not one).
MINE = "address_change"
OTHER_QUEUE = "warranty_claim"  # oscar's queue, not olga's
NOBODY = "delivery_status"  # no operator's queue: only the supervisor sees it


# ---- helpers --------------------------------------------------------------------------------------------------------


def open_cases(running: Running, process_id: str, n: int = 1) -> list[str]:
    platform = running.service.runtime.platform
    assert platform is not None
    return [platform.open_case(process_id=process_id) for _ in range(n)]


def start_sessions(client: TestClient, running: Running, case_ids: list[str]) -> list[str]:
    response = client.post("/api/v1/sessions", json={"case_ids": case_ids}, headers=running.tokens.header("service"))
    assert response.status_code == 202, response.text
    session_ids: list[str] = response.json()["session_ids"]
    assert len(session_ids) == len(case_ids)
    return session_ids


def pending_deferral(running: Running, session_id: str, timeout: float = 30.0) -> Deferral:
    """Wait for the session's pending deferral (every step waits for a human in copilot)."""

    def find() -> Deferral | None:
        for row in running.service.store.session_deferrals(session_id):
            if row.status == DeferralStatus.PENDING:
                return row.deferral
        return None

    found: Deferral = wait_for(find, timeout=timeout)
    return found


def inbox_ids(client: TestClient, running: Running, role: str) -> set[str]:
    response = client.get("/api/v1/inbox", params={"limit": 500}, headers=running.tokens.header(role))
    assert response.status_code == 200, response.text
    return {item["deferral"]["deferral_id"] for item in response.json()["items"]}


def answer_body(deferral: Deferral, verdict: str = "accept", **extra: Any) -> dict[str, Any]:
    return {
        "proposal_id": deferral.proposal.proposal_id,
        "state_etag": deferral.state.etag,
        "verdict": verdict,
        **extra,
    }


def post_answer(
    client: TestClient, running: Running, deferral_id: str, body: dict[str, Any], role: str = "operator"
) -> Any:
    return client.post(f"/api/v1/inbox/{deferral_id}/answer", json=body, headers=running.tokens.header(role))


def audit_entries(client: TestClient, running: Running) -> list[dict[str, Any]]:
    response = client.get(
        "/api/v1/supervisor/audit-log", params={"limit": 1000}, headers=running.tokens.header("supervisor")
    )
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def audited(client: TestClient, running: Running, actor: str, action: str, target: str | None = None) -> bool:
    return any(
        e["actor"] == actor and e["action"] == action and (target is None or target in e["target"])
        for e in audit_entries(client, running)
    )


def observed_state(running: Running, process_id: str = MINE) -> UIState:
    (case_id,) = open_cases(running, process_id)
    return running.service.runtime.adapter.observe(case_id)


def suggest(client: TestClient, running: Running, state: UIState, role: str = "operator") -> dict[str, Any]:
    response = client.post(
        "/api/v1/copilot/suggest",
        json={"state": state.model_dump(mode="json"), "k": 3},
        headers=running.tokens.header(role),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def suggested(client: TestClient, running: Running) -> tuple[UIState, dict[str, Any]]:
    """A state (of an olga queue) for which the policy has a proposal, and the suggest response."""
    for _ in range(10):
        state = observed_state(running)
        body = suggest(client, running, state)
        if body["proposal"] is not None:
            return state, body
    pytest.fail("the policy proposed nothing for 10 fresh cases")


# ---- copilot --------------------------------------------------------------------------------------------------------


def test_suggest_returns_a_valid_proposal_score_and_decision(client: TestClient, running: Running) -> None:
    state, body = suggested(client, running)
    proposal = Proposal.model_validate(body["proposal"])
    assert proposal.state_etag == state.etag
    assert proposal.process_id == state.process_id
    validate_action(proposal.action, state.screen)  # an action the screen can take
    score = body["score"]
    assert score is None or 0.0 <= score <= 1.0
    decision = Decision.model_validate(body["decision"])
    assert decision.proposal_id == proposal.proposal_id
    assert decision.score == score
    assert decision.stage.value == "copilot"
    assert decision.outcome.value in {"defer", "always_ask"}  # copilot: nothing executes
    assert body["latency_ms"] >= 0.0


def test_every_role_may_suggest(client: TestClient, running: Running) -> None:
    state = observed_state(running)
    for role in ("operator", "supervisor", "service"):
        suggest(client, running, state, role=role)


def test_feedback_reaches_the_feedback_store_through_the_sink(client: TestClient, running: Running) -> None:
    state, body = suggested(client, running)
    feedback_store = running.service.feedback_store
    assert feedback_store is not None
    before = feedback_store.count()
    accepted = client.post(
        "/api/v1/copilot/feedback",
        json={"state": state.model_dump(mode="json"), "proposal": body["proposal"], "verdict": "accept"},
        headers=running.tokens.header("operator"),
    )
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["record_id"].startswith("copilot-")
    # A correction by the supervisor, on a suggestion issued to the supervisor (feedback is bound to its caller).
    body = suggest(client, running, state, role="supervisor")
    assert body["proposal"] is not None
    alternative = body["proposal"]["alternatives"][0]["action"] if body["proposal"]["alternatives"] else None
    corrected = client.post(
        "/api/v1/copilot/feedback",
        json={
            "state": state.model_dump(mode="json"),
            "proposal": body["proposal"],
            "verdict": "correct",
            "corrected_action": alternative or body["proposal"]["action"],
            "reason": "acceptable_alternative",
        },
        headers=running.tokens.header("supervisor"),
    )
    assert corrected.status_code == 201, corrected.text
    wait_for(lambda: feedback_store.count() >= before + 2, timeout=30.0)


def test_feedback_errors_are_422_naming_the_field(client: TestClient, running: Running) -> None:
    state, body = suggested(client, running)
    base = {"state": state.model_dump(mode="json"), "proposal": body["proposal"]}
    headers = running.tokens.header("operator")
    missing = client.post(
        "/api/v1/copilot/feedback", json={**base, "verdict": "correct", "reason": "model_error"}, headers=headers
    )
    assert missing.status_code == 422
    assert "corrected_action" in missing.text
    reject = client.post(
        "/api/v1/copilot/feedback", json={**base, "verdict": "reject", "reason": "other"}, headers=headers
    )
    assert reject.status_code == 422  # the copilot has no reject: the operator simply does something else
    assert "verdict" in reject.text
    unknown = client.post("/api/v1/copilot/feedback", json={**base, "verdict": "accept", "bogus": 1}, headers=headers)
    assert unknown.status_code == 422
    assert "bogus" in unknown.text
    # the service role may suggest but not give feedback (it is no human)
    forbidden = client.post(
        "/api/v1/copilot/feedback", json={**base, "verdict": "accept"}, headers=running.tokens.header("service")
    )
    assert forbidden.status_code == 403


# ---- sessions and the inbox -----------------------------------------------------------------------------------------


def test_deferrals_reach_the_inbox_of_the_right_operator_only(client: TestClient, running: Running) -> None:
    mine = open_cases(running, MINE)
    theirs = open_cases(running, OTHER_QUEUE)
    nobody = open_cases(running, NOBODY)
    sessions = start_sessions(client, running, mine + theirs + nobody)
    deferrals = [pending_deferral(running, sid) for sid in sessions]
    assert [d.queue for d in deferrals] == [MINE, OTHER_QUEUE, NOBODY]
    olga, oscar, sam = (inbox_ids(client, running, role) for role in ("operator", "other_operator", "supervisor"))
    assert deferrals[0].deferral_id in olga
    assert deferrals[0].deferral_id not in oscar
    assert deferrals[0].deferral_id in sam
    assert deferrals[1].deferral_id in oscar
    assert deferrals[1].deferral_id not in olga
    assert deferrals[1].deferral_id in sam
    assert deferrals[2].deferral_id not in olga | oscar
    assert deferrals[2].deferral_id in sam
    # every item olga sees is in one of her queues; the response names them
    response = client.get("/api/v1/inbox", headers=running.tokens.header("operator")).json()
    assert sorted(response["queues"]) == sorted(QUEUES)
    assert {item["deferral"]["queue"] for item in response["items"]} <= set(QUEUES)
    assert client.get("/api/v1/inbox", headers=running.tokens.header("supervisor")).json()["queues"] is None
    assert audited(client, running, "svc", "sessions:start", sessions[0])


def duplicate_starts(running: Running) -> int:
    """Start commands the workers have handled for a session that already existed."""
    return sum(worker.stats().get("duplicate_starts", 0) for worker in running.service.runtime.workers)


def test_starting_a_session_twice_is_the_same_session(client: TestClient, running: Running) -> None:
    cases = open_cases(running, MINE)
    first = start_sessions(client, running, cases)
    before = duplicate_starts(running)
    again = start_sessions(client, running, cases)
    assert first == again
    deferral = pending_deferral(running, first[0])
    wait_for(lambda: duplicate_starts(running) > before)  # the second start has been handled, and ignored
    pending = [r for r in running.service.store.session_deferrals(first[0]) if r.status == DeferralStatus.PENDING]
    assert [r.deferral.deferral_id for r in pending] == [deferral.deferral_id]


def test_start_sessions_errors(client: TestClient, running: Running) -> None:
    headers = running.tokens.header("service")
    (case_id,) = open_cases(running, MINE)
    duplicates = client.post("/api/v1/sessions", json={"case_ids": [case_id, case_id]}, headers=headers)
    assert duplicates.status_code == 422
    assert "case_ids" in duplicates.text
    empty = client.post("/api/v1/sessions", json={"case_ids": []}, headers=headers)
    assert empty.status_code == 422
    unknown = client.post("/api/v1/sessions", json={"case_ids": ["no-such-case"]}, headers=headers)
    assert unknown.status_code == 404
    missing = client.get("/api/v1/sessions/session-no-such-case", headers=headers)
    assert missing.status_code == 404
    stop_missing = client.post("/api/v1/sessions/session-no-such-case/stop", headers=headers)
    assert stop_missing.status_code == 404


def test_answer_accept_resumes_the_session_then_duplicate_and_stale(client: TestClient, running: Running) -> None:
    (session_id,) = start_sessions(client, running, open_cases(running, MINE))
    deferral = pending_deferral(running, session_id)
    step_before = running.service.store.get_session(session_id).step  # type: ignore[union-attr]

    wrong_etag = post_answer(client, running, deferral.deferral_id, {**answer_body(deferral), "state_etag": "not-it"})
    assert wrong_etag.status_code == 409, wrong_etag.text
    assert "state_etag" in wrong_etag.text
    wrong_proposal = post_answer(client, running, deferral.deferral_id, {**answer_body(deferral), "proposal_id": "p-x"})
    assert wrong_proposal.status_code == 409, wrong_proposal.text

    accepted = post_answer(client, running, deferral.deferral_id, answer_body(deferral))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"result": "accepted", "session_id": session_id}

    def moved_on() -> bool:
        row = running.service.store.get_session(session_id)
        assert row is not None
        if row.status.value in {"completed", "handed_over", "failed"} or row.step > step_before:
            return True
        return any(
            r.status == DeferralStatus.PENDING and r.deferral.proposal.proposal_id != deferral.proposal.proposal_id
            for r in running.service.store.session_deferrals(session_id)
        )

    wait_for(moved_on, timeout=30.0)
    assert deferral.deferral_id not in inbox_ids(client, running, "operator")

    duplicate = post_answer(client, running, deferral.deferral_id, answer_body(deferral))
    assert duplicate.status_code == 200, duplicate.text
    assert duplicate.json() == {"result": "duplicate", "session_id": session_id}

    different = post_answer(client, running, deferral.deferral_id, answer_body(deferral, "reject", reason="other"))
    assert different.status_code == 409, different.text
    assert audited(client, running, "olga", "answer:accept", deferral.deferral_id)


def test_answer_refusals(client: TestClient, running: Running) -> None:
    (session_id,) = start_sessions(client, running, open_cases(running, MINE))
    deferral = pending_deferral(running, session_id)

    unknown = post_answer(client, running, "no-such-deferral", answer_body(deferral))
    assert unknown.status_code == 404
    assert "deferral_id" in unknown.text

    forbidden = post_answer(client, running, deferral.deferral_id, answer_body(deferral), role="other_operator")
    assert forbidden.status_code == 403, forbidden.text

    no_action = post_answer(
        client, running, deferral.deferral_id, answer_body(deferral, "correct", reason="model_error")
    )
    assert no_action.status_code == 422, no_action.text
    assert "corrected_action" in no_action.text

    extra = post_answer(client, running, deferral.deferral_id, {**answer_body(deferral), "surprise": True})
    assert extra.status_code == 422
    assert "surprise" in extra.text

    bad_verdict = post_answer(client, running, deferral.deferral_id, answer_body(deferral, "maybe"))
    assert bad_verdict.status_code == 422
    assert "verdict" in bad_verdict.text

    # none of these answered it: it is still pending, and the supervisor may answer any queue
    assert deferral.deferral_id in inbox_ids(client, running, "operator")
    by_supervisor = post_answer(
        client, running, deferral.deferral_id, answer_body(deferral, "reject", reason="other"), role="supervisor"
    )
    assert by_supervisor.status_code == 200, by_supervisor.text
    assert by_supervisor.json()["result"] == "accepted"
    wait_for(lambda: running.service.store.get_session(session_id).status.value == "handed_over")  # type: ignore[union-attr]
    assert audited(client, running, "sam", "answer:reject", deferral.deferral_id)


def test_stop_cancels_the_deferral_and_a_second_stop_conflicts(client: TestClient, running: Running) -> None:
    (session_id,) = start_sessions(client, running, open_cases(running, MINE))
    deferral = pending_deferral(running, session_id)
    operator_stop = client.post(f"/api/v1/sessions/{session_id}/stop", headers=running.tokens.header("operator"))
    assert operator_stop.status_code == 403

    stopped = client.post(f"/api/v1/sessions/{session_id}/stop", headers=running.tokens.header("service"))
    assert stopped.status_code == 202, stopped.text
    assert stopped.json()["session_id"] == session_id

    def detail() -> dict[str, Any]:
        response = client.get(f"/api/v1/sessions/{session_id}", headers=running.tokens.header("operator"))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    wait_for(lambda: detail()["status"] == "stopped", timeout=30.0)
    statuses = {d["deferral_id"]: d["status"] for d in detail()["deferrals"]}
    assert statuses[deferral.deferral_id] == "cancelled"
    assert deferral.deferral_id not in inbox_ids(client, running, "supervisor")

    again = client.post(f"/api/v1/sessions/{session_id}/stop", headers=running.tokens.header("supervisor"))
    assert again.status_code == 409, again.text
    late = post_answer(client, running, deferral.deferral_id, answer_body(deferral))
    assert late.status_code == 409, late.text
    assert audited(client, running, "svc", "sessions:stop", session_id)

    listed = client.get("/api/v1/sessions", params={"status": "stopped"}, headers=running.tokens.header("service"))
    assert listed.status_code == 200
    assert session_id in {s["session_id"] for s in listed.json()["sessions"]}
    assert listed.json()["counts"].get("stopped", 0) >= 1


# ---- supervisor -----------------------------------------------------------------------------------------------------


def test_stage_promote_demote_pin_unpin(client: TestClient, running: Running) -> None:
    state, body = suggested(client, running)
    process_id, action_type = state.process_id, body["proposal"]["action"]["type"]
    path = f"/api/v1/supervisor/slices/{process_id}/{action_type}"
    headers = running.tokens.header("supervisor")
    try:
        promoted = client.post(f"{path}/stage", json={"stage": "autopilot", "reason": "test promote"}, headers=headers)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["stage"] == "autopilot"
        assert promoted.json()["pinned_by"] == "sam"
        assert suggest(client, running, state)["decision"]["stage"] == "autopilot"  # the next decision sees it

        unpinned = client.post(f"{path}/unpin", headers=headers)
        assert unpinned.status_code == 200, unpinned.text
        assert unpinned.json()["pinned_by"] is None
        assert unpinned.json()["stage"] == "autopilot"
    finally:
        demoted = client.post(
            f"{path}/stage", json={"stage": "copilot", "reason": "test demote", "pin": False}, headers=headers
        )
    assert demoted.status_code == 200, demoted.text
    assert demoted.json()["stage"] == "copilot"
    assert demoted.json()["pinned_by"] is None
    assert suggest(client, running, state)["decision"]["stage"] == "copilot"

    slices = client.get("/api/v1/supervisor/slices", headers=running.tokens.header("operator"))
    assert slices.status_code == 200
    assert any(s["slice"] == {"process_id": process_id, "action_type": action_type} for s in slices.json())
    events = client.get("/api/v1/supervisor/events", headers=headers).json()
    assert any(e["actor"] == "sam" and e["to_stage"] == "autopilot" for e in events)
    target = f"{process_id}/{action_type}"
    assert audited(client, running, "sam", "stage:promote", target)
    assert audited(client, running, "sam", "stage:unpin", target)
    assert audited(client, running, "sam", "stage:demote", target)

    bad_stage = client.post(f"{path}/stage", json={"stage": "turbo", "reason": "x"}, headers=headers)
    assert bad_stage.status_code == 422
    no_reason = client.post(f"{path}/stage", json={"stage": "copilot", "reason": ""}, headers=headers)
    assert no_reason.status_code == 422
    assert "reason" in no_reason.text
    bad_action = client.post(
        f"/api/v1/supervisor/slices/{process_id}/fly/stage", json={"stage": "copilot", "reason": "x"}, headers=headers
    )
    assert bad_action.status_code == 422


def test_kill_switch_defers_every_decision(client: TestClient, running: Running) -> None:
    state, _ = suggested(client, running)
    headers = running.tokens.header("supervisor")
    try:
        on = client.put("/api/v1/supervisor/kill-switch", json={"on": True, "reason": "test incident"}, headers=headers)
        assert on.status_code == 200, on.text
        assert on.json()["on"] is True
        assert on.json()["actor"] == "sam"
        decision = suggest(client, running, state)["decision"]
        assert decision["reason"].startswith("kill_switch")
        assert decision["outcome"] == "defer"
        seen = client.get("/api/v1/supervisor/kill-switch", headers=running.tokens.header("operator"))
        assert seen.json()["on"] is True
    finally:
        off = client.put("/api/v1/supervisor/kill-switch", json={"on": False, "reason": "resolved"}, headers=headers)
    assert off.status_code == 200, off.text
    assert off.json()["on"] is False
    assert not suggest(client, running, state)["decision"]["reason"].startswith("kill_switch")
    assert audited(client, running, "sam", "kill_switch:on")
    assert audited(client, running, "sam", "kill_switch:off")


def test_overview_and_audit_log_shape(client: TestClient, running: Running) -> None:
    overview = client.get("/api/v1/supervisor/overview", headers=running.tokens.header("supervisor"))
    assert overview.status_code == 200, overview.text
    body = overview.json()
    assert body["critic_version"] == "critic-test-1"
    assert body["kill_switch"]["on"] is False
    entries = audit_entries(client, running)
    assert entries == sorted(entries, key=lambda e: e["entry_id"], reverse=True)  # newest first
    assert all(e["actor"] and e["action"] for e in entries)
    limited = client.get(
        "/api/v1/supervisor/audit-log", params={"limit": 0}, headers=running.tokens.header("supervisor")
    )
    assert limited.status_code == 422


# ---- server-sent events ---------------------------------------------------------------------------------------------


def read_events(response: httpx.Response, deadline: float) -> Any:
    """Yield (event, data) pairs from an SSE response until ``deadline``."""
    event: str | None = None
    for line in response.iter_lines():
        assert time.monotonic() < deadline, "no matching event in time"
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event is not None:
            yield event, json.loads(line.split(":", 1)[1])
            event = None


def test_inbox_stream_delivers_a_new_deferral(client: TestClient, running: Running, live_url: str) -> None:
    case_ids = open_cases(running, MINE)
    headers = {**running.tokens.header("operator"), "Accept": "text/event-stream"}
    timeout = httpx.Timeout(10.0, read=10.0)
    with (
        httpx.Client(base_url=live_url, timeout=timeout) as http_client,
        http_client.stream("GET", "/api/v1/inbox/stream", headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 20.0
        events = read_events(response, deadline)
        first_event, first = next(events)  # the current inbox right away
        assert first_event == "inbox"
        assert sorted(first["queues"]) == sorted(QUEUES)
        started = time.monotonic()
        (session_id,) = start_sessions(client, running, case_ids)
        for name, data in events:
            assert name == "inbox"
            assert {item["deferral"]["queue"] for item in data["items"]} <= set(QUEUES)
            if any(item["deferral"]["session_id"] == session_id for item in data["items"]):
                break
        else:
            pytest.fail("the stream ended without the new deferral")
        assert time.monotonic() - started < 10.0


def test_inbox_stream_needs_an_inbox_role(live_url: str, running: Running) -> None:
    with httpx.Client(base_url=live_url, timeout=10.0) as http_client:
        assert http_client.get("/api/v1/inbox/stream").status_code == 401
        refused = http_client.get("/api/v1/inbox/stream", headers=running.tokens.header("service"))
        assert refused.status_code == 403


# ---- probes and metrics ---------------------------------------------------------------------------------------------


def test_health_and_readiness(client: TestClient) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ok"
    assert body["checks"]["store"] == "ok"
    assert body["checks"]["broker"] == "ok"


def test_metrics_after_traffic(client: TestClient, running: Running) -> None:
    suggested(client, running)
    (session_id,) = start_sessions(client, running, open_cases(running, MINE))
    pending_deferral(running, session_id)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "autopilot_decisions_total" in text
    assert "autopilot_sessions{" in text
    assert 'autopilot_sessions{state="parked"}' in text or "parked" in text


def test_openapi_lists_the_routes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/copilot/suggest", "/api/v1/inbox/{deferral_id}/answer", "/api/v1/supervisor/kill-switch"):
        assert path in schema["paths"]


def test_a_screen_without_candidate_actions_gets_no_proposal_not_an_error(client: TestClient, running: Running) -> None:
    # Found by the schema fuzzer: a screen with no control, no chat and no process rules offers no candidate action.
    state = {"case_id": "0", "process_id": "0", "screen": {"process_id": "0", "screen_id": "0"}, "session_id": "s"}
    response = client.post("/api/v1/copilot/suggest", json={"state": state}, headers=running.tokens.header("operator"))
    assert response.status_code == 200, response.text
    assert response.json()["proposal"] is None
