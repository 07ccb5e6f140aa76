"""Limits at the edge (issue 17, finding 1): an oversized body is refused with 413 before it is read, a state over
a limit with 422 naming the field and the limit, and the largest accepted state costs about a normal one."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from schemas.state import UIState
from tests.api.conftest import Running, open_case_ids

pytestmark = pytest.mark.integration

ROUTE = "/api/v1/copilot/suggest"


def state_json(running: Running) -> dict[str, Any]:
    platform = running.service.runtime.platform
    assert platform is not None
    state: UIState = platform.observe(open_case_ids(running, 1)[0])
    body: dict[str, Any] = state.model_dump(mode="json")
    body.pop("etag")
    return body


def post(client: TestClient, running: Running, body: Any, **kwargs: Any) -> Any:
    return client.post(ROUTE, headers=running.tokens.header("operator"), json=body, **kwargs)


def test_a_body_over_the_limit_is_413_naming_the_limit(client: TestClient, running: Running) -> None:
    limit = running.service.settings.max_body_bytes
    state = state_json(running)
    state["chat"] = [{"role": "customer", "text": "x" * 4000} for _ in range(5 * 1024 * 1024 // 4000)]
    started = time.perf_counter()
    response = post(client, running, {"state": state})
    elapsed = time.perf_counter() - started
    assert response.status_code == 413, response.text[:300]
    assert str(limit) in response.json()["detail"] and "AUTOPILOT_MAX_BODY_BYTES" in response.json()["detail"]
    assert elapsed < 2.0  # refused unread (the JSON encoding of 5 MB on the client side is most of it)


def test_a_chunked_body_over_the_limit_is_413(client: TestClient, running: Running) -> None:
    limit = running.service.settings.max_body_bytes

    def chunks() -> Any:
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    response = client.post(ROUTE, headers=running.tokens.header("operator"), content=chunks())
    assert response.status_code == 413, response.text[:300]
    assert str(limit) in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "loc", "setting"),
    [
        ("chat", ["body", "state", "chat"], "AUTOPILOT_MAX_CHAT_MESSAGES"),
        ("controls", ["body", "state", "screen", "controls"], "AUTOPILOT_MAX_CONTROLS"),
        ("prompt", ["body", "state"], "AUTOPILOT_MAX_PROMPT_CHARS"),
    ],
)
def test_a_state_over_a_limit_is_422_naming_the_field_and_the_limit(
    client: TestClient, running: Running, change: str, loc: list[str], setting: str
) -> None:
    settings = running.service.settings
    state = state_json(running)
    proposal = post(client, running, {"state": state}).json()["proposal"]
    if change == "chat":
        state["chat"] = [{"role": "customer", "text": "hello"}] * (settings.max_chat_messages + 1)
        limit = settings.max_chat_messages
    elif change == "controls":
        template = next(c for c in state["screen"]["controls"] if c["kind"] == "button")
        extra = [{**template, "id": f"extra_{i}"} for i in range(settings.max_controls)]
        state["screen"]["controls"] = state["screen"]["controls"] + extra
        limit = settings.max_controls
    else:
        n = settings.max_prompt_chars // 4000 + 1
        state["chat"] = [{"role": "customer", "text": "y" * 4000}] * n
        limit = settings.max_prompt_chars
    for route in (ROUTE, "/api/v1/copilot/feedback"):
        body: dict[str, Any] = {"state": state}
        if route.endswith("feedback"):
            body |= {"proposal": proposal, "verdict": "accept"}
        response = client.post(route, headers=running.tokens.header("operator"), json=body)
        assert response.status_code == 422, (route, response.text[:300])
        issue = response.json()["detail"][0]
        assert issue["loc"] == loc, issue
        assert str(limit) in issue["msg"] and setting in issue["msg"], issue


def test_the_largest_accepted_state_costs_about_a_normal_one(client: TestClient, running: Running) -> None:
    settings = running.service.settings
    state = state_json(running)
    normal = post(client, running, {"state": state})
    assert normal.status_code == 200, normal.text
    text = ", ".join(f"ORD-{1000 + j}, {j} Baker Street, x{j}@mail.com" for j in range(200))[:4000]
    n = min(settings.max_chat_messages, settings.max_prompt_chars // 4000 - 1)
    state["chat"] = [{"role": "customer", "text": text}] * n
    started = time.perf_counter()
    big = post(client, running, {"state": state})
    elapsed = time.perf_counter() - started
    assert big.status_code == 200, big.text[:300]
    assert elapsed < 1.5, elapsed  # before the truncation rule: ~2 s for 50 such messages, 26 s for 600
