"""The red team (issue 17), repeated against a real running service on every ``make test``.

``python -m service.cli serve --sandbox`` runs as its own process (uvicorn, its own embedded broker, SQLite under
its data directory, one worker thread) on loopback; every try goes over HTTP, every loop is bounded. The
findings, as fixed: (1) an oversized request is refused at once and stalls nobody, (2) a revoked token's stream
is closed, (3) an answer and its audit entry are one, (4) feedback only for issued proposals, (5) answers checked
against their screen, (6) idle streams cost nothing, (7) the broker dies with the service, (8) no coercion to
booleans, (9) the sandbox survives a restart. And what held before: the auth table, no 5xx on malformed input,
exactly one of 20 parallel identical answers accepted.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.platform import SandboxPlatform
from schemas.state import UIState
from service.api.auth import Role, issue_token, revoke_token
from tests.api.served import ServedProcess, children, cpu_share, headers, prepare_data_dir
from tests.api.test_auth import PROTECTED

pytestmark = pytest.mark.integration

CASES = 40
MINE = "address_change"  # one of olga's queues
SUGGEST = "/api/v1/copilot/suggest"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models: Any) -> Iterator[tuple[ServedProcess, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("red-team")
    tokens = prepare_data_dir(data_dir, models)
    with ServedProcess(data_dir, env={"AUTOPILOT_SANDBOX_CASES": str(CASES)}) as process:
        yield process, tokens


@pytest.fixture(scope="module")
def replica() -> SandboxPlatform:
    """The served sandbox's cases, rebuilt here (a platform is deterministic for its seed and case index): the
    states the client sends and the case ids it starts sessions for."""
    platform = SandboxPlatform(seed=0)
    for _ in range(CASES):
        platform.open_case()
    return platform


def states(replica: SandboxPlatform, process_id: str | None = None) -> list[UIState]:
    return [
        replica.observe(case_id)
        for case_id in sorted(replica.cases)
        if process_id is None or replica.case(case_id).spec.process_id == process_id
    ]


def suggest_body(state: UIState) -> dict[str, Any]:
    return {"state": state.model_dump(mode="json")}


def client(process: ServedProcess, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
    return httpx.Client(base_url=process.url, headers=headers(token) if token else {}, timeout=timeout)


def pending(process: ServedProcess, token: str, session_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with client(process, token) as http:
        while time.monotonic() < deadline:
            for item in http.get("/api/v1/inbox", params={"limit": 500}).json()["items"]:
                if item["deferral"]["session_id"] == session_id:
                    found: dict[str, Any] = item["deferral"]
                    return found
            time.sleep(0.1)
    pytest.fail(f"no deferral for {session_id} within {timeout_s} s")


def start_session(process: ServedProcess, tokens: dict[str, str], case_id: str) -> str:
    with client(process, tokens["service"]) as http:
        response = http.post("/api/v1/sessions", json={"case_ids": [case_id]})
        assert response.status_code == 202, response.text
        session_id: str = response.json()["session_ids"][0]
        return session_id


def unused_case(replica: SandboxPlatform, used: set[str], process_id: str = MINE) -> str:
    for case_id in sorted(replica.cases):
        if case_id not in used and replica.case(case_id).spec.process_id == process_id:
            used.add(case_id)
            return case_id
    pytest.fail(f"no unused {process_id} case left")


USED: set[str] = set()


# ---- 1: an oversized request ---------------------------------------------------------------------------------------


def test_1_an_oversized_suggest_is_refused_at_once_and_stalls_nobody(
    served: tuple[ServedProcess, dict[str, str]], replica: SandboxPlatform
) -> None:
    process, tokens = served
    state = states(replica)[0]
    normal = json.dumps(suggest_body(state)).encode()
    huge_state = suggest_body(state)
    huge_state["state"].pop("etag")
    huge_state["state"]["chat"] = [{"role": "customer", "text": "x" * 3999 + str(i % 10)} for i in range(1300)]
    huge = json.dumps(huge_state).encode()  # ~5 MB, encoded before the clock starts
    assert len(huge) > 5_000_000
    send = {"Content-Type": "application/json", **headers(tokens["operator"])}
    with client(process) as http:
        for _ in range(3):  # warm-up
            assert http.post(SUGGEST, content=normal, headers=send).status_code == 200

        def timed(body: bytes) -> tuple[int, float]:
            with client(process) as own:
                started = time.perf_counter()
                response = own.post(SUGGEST, content=body, headers=send)
                return response.status_code, (time.perf_counter() - started) * 1000

        alone = [timed(normal)[1] for _ in range(5)]
        refused = [timed(huge) for _ in range(3)]
        assert all(status == 413 for status, _ in refused), refused
        assert min(ms for _, ms in refused) < 100.0, refused
        with ThreadPoolExecutor(4) as pool:
            big = [pool.submit(timed, huge) for _ in range(3)]
            beside = [timed(normal)[1] for _ in range(5)]
            assert all(f.result()[0] == 413 for f in big)
    # A normal suggest beside the oversized ones: as fast as alone (the bound is loose: a shared machine).
    assert statistics.median(beside) < 3 * statistics.median(alone) + 50, (alone, beside)


def test_1_a_long_chat_is_422_and_the_largest_accepted_state_is_fast(
    served: tuple[ServedProcess, dict[str, str]], replica: SandboxPlatform
) -> None:
    process, tokens = served
    body = suggest_body(states(replica)[1])
    body["state"].pop("etag")
    text = ", ".join(f"ORD-{1000 + j}, {j} Baker Street, x{j}@mail.com" for j in range(200))[:4000]
    with client(process, tokens["operator"]) as http:
        body["state"]["chat"] = [{"role": "customer", "text": "hi"}] * 201
        long_chat = http.post(SUGGEST, json=body)
        assert long_chat.status_code == 422 and long_chat.json()["detail"][0]["loc"] == ["body", "state", "chat"]
        body["state"]["chat"] = [{"role": "customer", "text": text}] * 45  # 180k characters: under every limit
        started = time.perf_counter()
        accepted = http.post(SUGGEST, json=body)
        assert accepted.status_code == 200, accepted.text[:300]
        assert time.perf_counter() - started < 2.0


# ---- 2: a revoked token's stream ---------------------------------------------------------------------------------


def test_2_a_revoked_tokens_open_stream_is_closed_within_2_s(served: tuple[ServedProcess, dict[str, str]]) -> None:
    process, _ = served
    tokens_file = process.data_dir / "tokens.json"
    token = issue_token(tokens_file, "mallory", Role.OPERATOR, [MINE])
    deadline = time.monotonic() + 5.0  # the service re-reads the token file within a second
    with client(process, token) as http:
        while http.get("/api/v1/inbox").status_code != 200:
            assert time.monotonic() < deadline, "the new token never worked"
            time.sleep(0.1)
    with client(process, token) as http, http.stream("GET", "/api/v1/inbox/stream") as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("event: ")) == "event: inbox"
        assert revoke_token(tokens_file, "mallory")
        started = time.monotonic()
        rest = list(lines)  # ends when the server closes the stream
        elapsed = time.monotonic() - started
    assert "event: closed" in rest and elapsed <= 2.5, (elapsed, rest[-3:])


# ---- 3, 5 and what held: answers -------------------------------------------------------------------------------------


def test_3_5_answers_exactly_once_with_their_audit_entry_and_checked_against_the_screen(
    served: tuple[ServedProcess, dict[str, str]], replica: SandboxPlatform
) -> None:
    process, tokens = served
    session_id = start_session(process, tokens, unused_case(replica, USED))
    deferral = pending(process, tokens["operator"], session_id)
    path = f"/api/v1/inbox/{deferral['deferral_id']}/answer"
    base = {"proposal_id": deferral["proposal"]["proposal_id"], "state_etag": deferral["state"]["etag"]}
    with client(process, tokens["operator"]) as http:
        bogus = {"type": "click_control", "control_id": "no_such_control"}
        wrong = http.post(path, json={**base, "verdict": "correct", "reason": "model_error", "corrected_action": bogus})
        assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"][-1] == "control_id"

    def answer(_: int) -> tuple[int, str]:
        with client(process, tokens["operator"]) as own:
            response = own.post(path, json={**base, "verdict": "accept"})
            return response.status_code, response.json().get("result", response.text)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(answer, range(20)))
    assert all(status == 200 for status, _ in results), results
    assert sorted(result for _, result in results) == ["accepted"] + ["duplicate"] * 19
    with client(process, tokens["supervisor"]) as http:
        entries = http.get("/api/v1/supervisor/audit-log", params={"limit": 1000}).json()
    mine = [e for e in entries if e["target"] == deferral["deferral_id"]]
    assert [(e["actor"], e["action"]) for e in mine] == [("olga", "answer:accept")]


# ---- 4: feedback -------------------------------------------------------------------------------------------------------


def test_4_made_up_feedback_never_reaches_the_training_data(
    served: tuple[ServedProcess, dict[str, str]], replica: SandboxPlatform
) -> None:
    process, tokens = served
    state = next(s for s in states(replica, MINE))
    with client(process, tokens["operator"]) as http:
        proposal = http.post(SUGGEST, json=suggest_body(state)).json()["proposal"]
        assert proposal is not None
        body = {"state": state.model_dump(mode="json"), "verdict": "accept"}
        tries = {
            "never issued": {**proposal, "proposal_id": "forged"},
            "close_chat on a screen without one": {**proposal, "action": {"type": "close_chat", "resolution": "x"}},
            "another case": {**proposal, "case_id": "someone-else"},
        }
        for name, forged in tries.items():
            response = http.post("/api/v1/copilot/feedback", json={**body, "proposal": forged})
            assert response.status_code in (404, 409, 422), (name, response.status_code, response.text)
        other = next(s for s in states(replica) if s.process_id not in ("address_change", "refund_damaged"))
        theirs = http.post(SUGGEST, json=suggest_body(other)).json()["proposal"]
        if theirs is not None:
            outside = http.post(
                "/api/v1/copilot/feedback",
                json={"state": other.model_dump(mode="json"), "proposal": theirs, "verdict": "accept"},
            )
            assert outside.status_code == 403, outside.text
        assert http.post("/api/v1/copilot/feedback", json={**body, "proposal": proposal}).status_code == 201


# ---- 6: idle streams cost nothing -----------------------------------------------------------------------------------


def test_6_fifty_idle_streams_cost_nothing_and_do_not_slow_suggest(
    served: tuple[ServedProcess, dict[str, str]], replica: SandboxPlatform
) -> None:
    process, tokens = served
    body = json.dumps(suggest_body(states(replica)[2])).encode()
    send = {"Content-Type": "application/json", **headers(tokens["operator"])}

    def latency(http: httpx.Client, n: int = 10) -> float:
        values = []
        for _ in range(n):
            started = time.perf_counter()
            assert http.post(SUGGEST, content=body, headers=send).status_code == 200
            values.append(time.perf_counter() - started)
        return statistics.median(values)

    with client(process) as http:
        latency(http, 3)
        without = latency(http)
    pids = [process.pid, *children(process.pid)]

    async def with_streams() -> tuple[float, float]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=process.url, timeout=httpx.Timeout(10, read=60), limits=limits) as aio:
            opened = asyncio.Event()
            count = 0

            async def hold() -> None:
                nonlocal count
                async with aio.stream("GET", "/api/v1/inbox/stream", headers=headers(tokens["operator"])) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("event: inbox"):
                            count += 1
                            if count == 50:
                                opened.set()
                        await asyncio.sleep(0)

            tasks = [asyncio.create_task(hold()) for _ in range(50)]
            await asyncio.wait_for(opened.wait(), 30)
            share = await asyncio.to_thread(cpu_share, pids, 5.0)
            with client(process) as http:
                slower = await asyncio.to_thread(latency, http)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return share, slower

    share, slower = asyncio.run(with_streams())
    assert share < 0.25, share  # service + broker, 50 streams open and nothing happening (was ~1 core)
    assert slower < 2 * without + 0.05, (without, slower)


# ---- 8 and what held: contracts, auth, malformed input -------------------------------------------------------------


def test_8_no_string_or_number_becomes_a_boolean(served: tuple[ServedProcess, dict[str, str]]) -> None:
    process, tokens = served
    with client(process, tokens["supervisor"]) as http:
        for value in ("yes", 1, "on"):
            response = http.put("/api/v1/supervisor/kill-switch", json={"on": value, "reason": "red team"})
            assert response.status_code == 422, response.text
        assert http.get("/api/v1/supervisor/kill-switch").json()["on"] is False


def test_the_auth_table_holds(served: tuple[ServedProcess, dict[str, str]]) -> None:
    process, tokens = served
    with client(process, timeout=10.0) as http:
        for method, path, _ in PROTECTED:
            assert http.request(method, path).status_code == 401, (method, path)
            wrong = http.request(method, path, headers=headers("ap_" + "x" * 43))
            assert wrong.status_code == 401, (method, path)
        for method, path, _ in PROTECTED:
            if "/supervisor/" in path and not path.endswith(("slices", "kill-switch")):
                assert http.request(method, path, headers=headers(tokens["operator"])).status_code == 403, path
        service_inbox = http.get("/api/v1/inbox", headers=headers(tokens["service"]))
        assert service_inbox.status_code == 403


MALFORMED: list[Any] = [
    b"{",
    b"null",
    b"[]",
    b'"a string"',
    b'{"state": 1}',
    b'{"state": {"screen": []}}',
    b'{"case_ids": [1e309]}',
    b'{"proposal_id": {"$ne": null}, "state_etag": [], "verdict": "accept"}',
    b'{"on": false, "reason": "' + b"r" * 10_000 + b'"}',
    '{"reason": "\udc80"}'.encode("utf-8", "surrogatepass"),
    b"\xff\xfe\x00garbage",
]


def test_no_5xx_on_malformed_input(served: tuple[ServedProcess, dict[str, str]]) -> None:
    process, tokens = served
    posts = [(m, p) for m, p, _ in PROTECTED if m in ("POST", "PUT")]
    with client(process, tokens["supervisor"], timeout=10.0) as http:
        for method, path in posts:
            for body in MALFORMED:
                response = http.request(method, path, content=body, headers={"Content-Type": "application/json"})
                assert response.status_code < 500, (method, path, body[:40], response.text[:200])
        assert http.get("/readyz").status_code == 200


# ---- 7 and 9: kill -9 of the service --------------------------------------------------------------------------------


def test_7_9_after_kill_9_the_broker_is_gone_and_a_restart_keeps_its_sandbox(
    tmp_path: Path, models: Any, replica: SandboxPlatform
) -> None:
    tokens = prepare_data_dir(tmp_path, models)
    # Short leases: the crashed worker's sessions are taken over within seconds of the restart.
    env = {"AUTOPILOT_SANDBOX_CASES": str(CASES), "AUTOPILOT_LEASE_S": "4"}
    first = ServedProcess(tmp_path, env=env).start()
    try:
        brokers = children(first.pid)
        assert brokers, "no embedded broker child"
        used: set[str] = set()
        session_id = start_session(first, tokens, unused_case(replica, used))
        deferral = pending(first, tokens["operator"], session_id)
    finally:
        first.kill()
    deadline = time.monotonic() + 5.0
    while any(Path(f"/proc/{pid}").exists() for pid in brokers) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [
        pid
        for pid in brokers
        if Path(f"/proc/{pid}/stat").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    ]
    assert not alive, f"the broker outlived the service: {alive}"

    with ServedProcess(tmp_path, env=env) as second:
        # The deferral parked before the crash is still answerable: the sandbox's cases survived the restart.
        with client(second, tokens["operator"]) as http:
            response = http.post(
                f"/api/v1/inbox/{deferral['deferral_id']}/answer",
                json={"proposal_id": deferral["proposal"]["proposal_id"], "state_etag": deferral["state"]["etag"],
                      "verdict": "accept"},
            )  # fmt: skip
            assert response.status_code == 200 and response.json()["result"] == "accepted", response.text
        deadline = time.monotonic() + 30.0
        with client(second, tokens["supervisor"]) as http:
            while time.monotonic() < deadline:
                row = http.get(f"/api/v1/sessions/{session_id}").json()
                if row["step"] > deferral["proposal"]["step"] or row["status"] not in ("running", "parked"):
                    break
                time.sleep(0.2)
            assert row["status"] != "failed" and row["actions_applied"] >= 1, row
