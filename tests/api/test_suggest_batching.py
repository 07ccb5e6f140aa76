"""Copilot suggestions through the micro-batcher, over real HTTP: concurrent requests are answered from one batched
policy call, each with its own state's proposal; a full queue answers 429 with Retry-After at once.

The policy is the fixture's tiny LMPolicy behind a gate: while the gate is closed, the batcher's thread is held
inside a policy call, so the test decides what queues behind it (no timing assumptions)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from policy.policy import LMPolicy
from schemas.proposal import Proposal
from schemas.state import UIState
from service.runtime.bus.broker import EmbeddedBroker
from tests.api.conftest import Running, open_case_ids, serve, start_service, wait_for

WAIT = 30.0


class GatedPolicy:
    """The real policy; each batched call records its size and waits for the gate."""

    def __init__(self, policy: LMPolicy) -> None:
        self.policy = policy
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        self.batch_sizes.append(len(states))
        self.entered.set()
        assert self.gate.wait(WAIT)
        return self.policy.propose_batch(states, k)


@pytest.fixture
def gated_service(tmp_path: Path, broker: EmbeddedBroker, models: Any) -> Iterator[tuple[Running, GatedPolicy, str]]:
    policy, critic, thresholds = models
    gated = GatedPolicy(policy)
    running = start_service(
        tmp_path,
        broker.bootstrap,
        (gated, critic, thresholds),
        workers=0,  # only the copilot uses the policy here
        policy_max_queue=4,
        policy_max_wait_ms=1.0,
    )
    try:
        with serve(running.app) as url:
            yield running, gated, url
    finally:
        running.service.stop()


def _states(running: Running, n: int) -> list[UIState]:
    platform = running.service.runtime.platform
    assert platform is not None
    return [platform.observe(case_id) for case_id in open_case_ids(running, n)]


def _post(url: str, running: Running, state: UIState) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=WAIT) as client:
        return client.post(
            "/api/v1/copilot/suggest",
            json={"state": state.model_dump(mode="json"), "k": 2},
            headers=running.tokens.header("operator"),
        )


def test_concurrent_suggestions_share_a_batch_and_get_their_own_proposals(
    gated_service: tuple[Running, GatedPolicy, str],
) -> None:
    running, gated, url = gated_service
    states = _states(running, 5)
    gated.gate.clear()
    with ThreadPoolExecutor(max_workers=5) as pool:
        first = pool.submit(_post, url, running, states[0])
        assert gated.entered.wait(WAIT)  # the batcher's thread is inside the policy with states[0]
        rest = [pool.submit(_post, url, running, state) for state in states[1:]]
        wait_for(lambda: running.service.suggester.queued() == 4, timeout=WAIT)
        gated.gate.set()
        responses = [first.result(WAIT), *(f.result(WAIT) for f in rest)]
    assert gated.batch_sizes == [1, 4]  # the four that queued were answered from one policy call
    for state, response in zip(states, responses, strict=True):
        assert response.status_code == 200, response.text
        proposal = response.json()["proposal"]
        assert proposal is not None and proposal["state_etag"] == state.etag and proposal["case_id"] == state.case_id
        assert len(proposal["alternatives"]) <= 1  # k=2
        assert response.json()["latency_ms"] > 0


def test_a_full_queue_answers_429_with_retry_after(gated_service: tuple[Running, GatedPolicy, str]) -> None:
    running, gated, url = gated_service
    states = _states(running, 6)
    gated.gate.clear()
    with ThreadPoolExecutor(max_workers=6) as pool:
        held = pool.submit(_post, url, running, states[0])
        assert gated.entered.wait(WAIT)
        queued = [pool.submit(_post, url, running, state) for state in states[1:5]]
        wait_for(lambda: running.service.suggester.queued() == 4, timeout=WAIT)  # max_queue
        refused = _post(url, running, states[5])
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "queue full" in refused.json()["detail"]
        gated.gate.set()
        assert all(f.result(WAIT).status_code == 200 for f in [held, *queued])
    assert _post(url, running, states[5]).status_code == 200  # room again
    schema = httpx.get(f"{url}/openapi.json").json()
    documented = schema["paths"]["/api/v1/copilot/suggest"]["post"]["responses"]
    assert "429" in documented and "503" in documented
