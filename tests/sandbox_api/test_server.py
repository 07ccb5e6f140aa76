"""The app behind a real uvicorn server on a loopback port, driven with httpx over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sandbox.api import API_PREFIX, create_app
from schemas import UIState
from service.api.server_thread import serve_in_thread


@pytest.fixture
def base_url() -> Iterator[str]:
    # Port 0: the OS picks a free port, read back from the listening socket, so parallel runs never clash.
    with serve_in_thread(create_app(seed=4), name="sandbox-api-test-server") as server:
        yield server.url + API_PREFIX
    assert not server.alive(), "the server did not shut down"


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_round_trip_over_real_http(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=5.0) as client:
        assert client.get("/health").json() == {"status": "ok"}
        created = client.post("/cases", json={"process_id": "refund_damaged"})
        assert created.status_code == 201
        case_id = created.json()["case_id"]
        state = UIState.model_validate(client.get(f"/cases/{case_id}/state").json())
        assert state.screen.screen_id == "rf_find"
        assert state.step == 0
        fill = {"type": "fill_field", "control_id": "order_id", "value": "ORD-123456"}
        response = client.post(f"/cases/{case_id}/actions", json={"action": fill, "idempotency_key": "fill-1"})
        assert response.status_code == 200
        after = UIState.model_validate(response.json())
        assert after.values == {"order_id": "ORD-123456"}
        assert after.step == 1
        assert after.etag != state.etag
        bad = client.post(f"/cases/{case_id}/actions", json={"action": {**fill, "value": "nope"}})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "action", "value"]

        # Concurrent requests from several connections: each applied exactly once, none lost or doubled.
        say = {"type": "send_text_to_chat", "text": "One moment please."}

        def send(i: int) -> int:
            r = client.post(f"/cases/{case_id}/actions", json={"action": say, "idempotency_key": f"say-{i % 8}"})
            return r.status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(send, range(16)))
        assert codes == [200] * 16
        assert client.get(f"/cases/{case_id}").json()["step"] == 1 + 8  # 8 distinct keys, each sent twice
