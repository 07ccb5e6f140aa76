"""The BPM adapter contract, run against both adapters: the in-process sandbox and the REST task API behind a real
uvicorn server on a free loopback port. Both adapters share one real platform per test, so the tests can pick
actions with the sandbox's own step model (as the sandbox's HTTP operator does) and check what was applied."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from sandbox.adapter import SandboxAdapter, operator_clock
from sandbox.api import API_PREFIX, create_app
from sandbox.operators import READ_SECONDS, operator_pool
from sandbox.platform import MAX_STEPS, SandboxPlatform
from sandbox.simulate import step_model, update_posterior
from schemas import (
    Action,
    ClickControl,
    CloseChat,
    FillField,
    SendTextToChat,
    ToggleCheckbox,
    TransferChat,
    action_key,
)
from service.api.server_thread import serve_in_thread
from service.runtime.adapters import (
    BpmAdapter,
    BpmUnavailableError,
    CaseEndedError,
    CaseNotFoundError,
    HttpBpmAdapter,
    InvalidActionError,
    StaleStateError,
)

ORDER = FillField(control_id="order_id", value="ORD-123456")  # valid on refund_damaged's first screen (rf_find)
ASGIApp = Callable[..., Any]


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free port; yield the task API's root URL; stop it after."""
    with serve_in_thread(app, name="adapter-test-server") as server:
        yield server.url + API_PREFIX
    assert not server.alive(), "the server did not shut down"


class Recorder:
    """Every request the HTTP adapter sends (method, path, JSON body), through httpx's event hooks."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []

    def __call__(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))

    def sent_actions(self) -> list[dict[str, Any]]:
        return [
            body["action"] for method, path, body in self.requests if method == "POST" and path.endswith("/actions")
        ]


@pytest.fixture
def platform() -> SandboxPlatform:
    return SandboxPlatform(seed=7)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(params=["inprocess", pytest.param("http", marks=pytest.mark.integration)])
def adapter(request: pytest.FixtureRequest, platform: SandboxPlatform, recorder: Recorder) -> Iterator[BpmAdapter]:
    if request.param == "inprocess":
        yield SandboxAdapter(platform)
        return
    with serve(create_app(platform=platform)) as url:
        client = httpx.Client(event_hooks={"request": [recorder]})
        http = HttpBpmAdapter(url, timeout_s=5.0, client=client, retries=1, backoff_s=0.01)
        yield http
        http.close()
        client.close()


def drive_to_end(adapter: BpmAdapter, platform: SandboxPlatform, case_id: str) -> list[str]:
    """Work the case with the sandbox's Bayes-optimal policy (its step model reads the platform directly), every
    action through the adapter; return the idempotency keys used."""
    pool = operator_pool(12, seed=0)
    posterior = {op.operator_id: 1.0 / len(pool) for op in pool}
    keys: list[str] = []
    for step in range(MAX_STEPS + 1):
        if adapter.ended(case_id):
            return keys
        model = step_model(platform, case_id, pool, posterior)
        action = model.best()
        assert action is not None, f"the step model has no action left on case {case_id}"
        keys.append(f"{case_id}:{step}")
        adapter.apply(case_id, action, keys[-1])
        posterior = update_posterior(posterior, model, action_key(action))
    raise AssertionError(f"case {case_id} did not end within {MAX_STEPS} steps")


# --- the contract, for both adapters -------------------------------------------------------------------------


def test_implements_the_protocol(adapter: BpmAdapter) -> None:
    assert isinstance(adapter, BpmAdapter)


def test_open_and_observe(adapter: BpmAdapter) -> None:
    case_id = adapter.open_case("refund_damaged")
    state = adapter.observe(case_id)
    assert state.case_id == case_id
    assert state.process_id == "refund_damaged"
    assert state.screen.screen_id == "rf_find"
    assert state.step == 0
    assert state.chat, "the customer's first message is waiting"
    assert state.etag and adapter.observe(case_id).etag == state.etag  # nothing changed, same etag
    assert not adapter.ended(case_id)
    outcome = adapter.outcome(case_id)
    assert (outcome["status"], outcome["correct"]) == ("open", None)


def test_unknown_process_is_refused_naming_the_field(adapter: BpmAdapter) -> None:
    with pytest.raises(ValueError, match="process_id"):
        adapter.open_case("no_such_process")


def test_apply_a_valid_action(adapter: BpmAdapter) -> None:
    case_id = adapter.open_case("refund_damaged")
    before = adapter.observe(case_id)
    after = adapter.apply(case_id, ORDER, "k-order", expected_etag=before.etag)
    assert after.values == {"order_id": "ORD-123456"}
    assert after.step == 1
    assert after.recent_actions == [ORDER]
    assert after.etag != before.etag
    assert adapter.observe(case_id) == after


def test_same_key_applies_nothing_the_second_time(adapter: BpmAdapter, platform: SandboxPlatform) -> None:
    case_id = adapter.open_case("refund_damaged")
    say = SendTextToChat(text="Let me check that order for you.")
    first = adapter.apply(case_id, say, "k-say")
    again = adapter.apply(case_id, say, "k-say")
    assert again == first
    # A key names one step: even a different action under a used key applies nothing.
    other = adapter.apply(case_id, ORDER, "k-say")
    assert other == first
    assert platform.case(case_id).step == 1
    assert adapter.observe(case_id).recent_actions == [say]


def test_a_redelivered_step_returns_the_current_state(adapter: BpmAdapter) -> None:
    # The first answer was lost, the case moved on: the step comes again with its old etag, on a screen where
    # its action no longer fits. The key was applied, so that is no error.
    case_id = adapter.open_case("refund_damaged")
    start = adapter.observe(case_id)
    adapter.apply(case_id, ORDER, "k-1", expected_etag=start.etag)
    adapter.apply(case_id, ClickControl(control_id="lookup_order"), "k-2")
    moved = adapter.apply(case_id, ClickControl(control_id="next"), "k-3")
    assert moved.screen.screen_id != "rf_find"
    assert adapter.apply(case_id, ORDER, "k-1", expected_etag=start.etag) == moved
    assert adapter.apply(case_id, ClickControl(control_id="next"), "k-3") == moved


def test_stale_etag_is_refused(adapter: BpmAdapter, platform: SandboxPlatform) -> None:
    case_id = adapter.open_case("refund_damaged")
    seen = adapter.observe(case_id)
    now = adapter.apply(case_id, ORDER, "k-1", expected_etag=seen.etag)
    with pytest.raises(StaleStateError) as refused:
        adapter.apply(case_id, ClickControl(control_id="lookup_order"), "k-2", expected_etag=seen.etag)
    assert (refused.value.expected_etag, refused.value.current_etag) == (seen.etag, now.etag)
    assert "expected_etag" in str(refused.value)
    assert not refused.value.retryable
    assert adapter.observe(case_id) == now  # nothing applied
    assert "k-2" not in platform.case(case_id).idempotency  # ... and the key is still free
    fresh = adapter.apply(case_id, ClickControl(control_id="lookup_order"), "k-2", expected_etag=now.etag)
    assert fresh.step == 2


@pytest.mark.parametrize(
    ("action", "field"),
    [
        (FillField(control_id="no_such_control", value="x"), "control_id"),
        (FillField(control_id="order_id", value="not-an-order"), "value"),
        (FillField(control_id="next", value="x"), "control_id"),
        (ToggleCheckbox(control_id="order_id", checked=True), "control_id"),
        (TransferChat(queue="nowhere"), "queue"),
        (CloseChat(resolution="made_up"), "resolution"),
    ],
)
def test_invalid_action_is_refused_before_it_is_applied(
    action: Action, field: str, adapter: BpmAdapter, platform: SandboxPlatform, recorder: Recorder
) -> None:
    case_id = adapter.open_case("refund_damaged")
    before = adapter.observe(case_id)
    with pytest.raises(InvalidActionError) as refused:
        adapter.apply(case_id, action, "k-bad")
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")
    assert isinstance(refused.value, ValueError)
    assert adapter.observe(case_id) == before
    assert platform.case(case_id).idempotency == {}
    # Refused on this side: the HTTP adapter never sent the action (empty for the in-process adapter).
    assert action.model_dump(mode="json") not in recorder.sent_actions()


def test_unknown_case(adapter: BpmAdapter) -> None:
    calls: list[Callable[[], object]] = [
        lambda: adapter.observe("C7-999999"),
        lambda: adapter.apply("C7-999999", ORDER, "k"),
        lambda: adapter.ended("C7-999999"),
        lambda: adapter.outcome("C7-999999"),
    ]
    for call in calls:
        with pytest.raises(CaseNotFoundError, match="C7-999999"):
            call()


def test_ended_case_and_its_outcome(adapter: BpmAdapter, platform: SandboxPlatform) -> None:
    case_id = adapter.open_case("plan_change")
    keys = drive_to_end(adapter, platform, case_id)
    assert adapter.ended(case_id)
    last = adapter.observe(case_id)
    close = CloseChat(resolution="plan_changed")
    with pytest.raises(CaseEndedError, match=case_id):
        adapter.apply(case_id, close, "k-after-the-end")
    with pytest.raises(CaseEndedError):  # also when the etag is stale or the action invalid: the case is over
        adapter.apply(case_id, FillField(control_id="nope", value="x"), "k-after-2", expected_etag="0" * 20)
    assert adapter.apply(case_id, close, keys[-1]) == last  # a redelivered last step is still answered
    truth = platform.outcome(case_id)
    outcome = adapter.outcome(case_id)
    assert outcome["case_id"] == case_id
    assert outcome["status"] == platform.case(case_id).ended
    assert outcome["status"] in ("closed", "transferred", "stuck")
    assert outcome["resolution_code"] == truth["code"]
    assert outcome["correct"] is truth["correct"]
    assert outcome["fields"] == truth["fields"]
    if isinstance(adapter, HttpBpmAdapter):
        assert outcome["handling_time_s"] is None  # the API does not simulate time


def test_concurrent_applies_with_one_key_apply_once(adapter: BpmAdapter, platform: SandboxPlatform) -> None:
    case_id = adapter.open_case("refund_damaged")
    say = SendTextToChat(text="One moment please.")
    with ThreadPoolExecutor(max_workers=8) as pool:
        states = list(pool.map(lambda i: adapter.apply(case_id, say, f"k-{i % 3}"), range(12)))
    assert all(s.case_id == case_id for s in states)
    assert platform.case(case_id).step == 3  # three distinct keys, each applied exactly once


# --- in-process only: simulated handling time ----------------------------------------------------------------


def test_handling_time_follows_the_clock_and_the_charges(platform: SandboxPlatform) -> None:
    ticks: list[tuple[str, int]] = []

    def clock(action: Action, new_customer_messages: int) -> float:
        ticks.append((action_key(action), new_customer_messages))
        return 1.0 + 10.0 * new_customer_messages

    adapter = SandboxAdapter(platform, clock=clock)
    case_id = adapter.open_case("refund_damaged")
    assert adapter.outcome(case_id)["handling_time_s"] == 0.0
    adapter.apply(case_id, SendTextToChat(text="Could you give me your order number?"), "k-1")
    adapter.apply(case_id, SendTextToChat(text="Could you give me your order number?"), "k-1")  # replay: no time
    adapter.apply(case_id, ORDER, "k-2")
    replies = sum(1 for m in adapter.observe(case_id).chat if m.role == "customer") - 1
    # The first message is read before the first action, the replies to it before the second.
    assert ticks == [
        (action_key(SendTextToChat(text="Could you give me your order number?")), 1),
        (action_key(ORDER), replies),
    ]
    assert adapter.outcome(case_id)["handling_time_s"] == 1.0 + 10.0 + 1.0 + 10.0 * replies
    adapter.charge(case_id, 30.0)  # e.g. an operator answering a deferral
    assert adapter.outcome(case_id)["handling_time_s"] == 1.0 + 10.0 + 1.0 + 10.0 * replies + 30.0
    with pytest.raises(ValueError, match="seconds"):
        adapter.charge(case_id, -1.0)
    adapter.forget(case_id)
    with pytest.raises(CaseNotFoundError):
        adapter.outcome(case_id)


def test_operator_clock_is_the_simulators_time_model(platform: SandboxPlatform) -> None:
    operator = operator_pool(12, seed=0)[3]
    clock = operator_clock(operator, random.Random(5))
    expected = operator.action_seconds(ORDER, random.Random(5)) + 2 * READ_SECONDS
    assert clock(ORDER, 2) == pytest.approx(expected)
    untimed = SandboxAdapter(platform)
    case_id = untimed.open_case("plan_change")
    drive_to_end(untimed, platform, case_id)
    assert untimed.outcome(case_id)["handling_time_s"] is None  # no clock: the platform does not know


# --- HTTP only: the transport ------------------------------------------------------------------------------


@pytest.mark.integration
def test_http_adapter_cannot_choose_a_case_index(platform: SandboxPlatform) -> None:
    with serve(create_app(platform=platform)) as url:
        adapter = HttpBpmAdapter(url)
        with pytest.raises(ValueError, match="case_index"):
            adapter.open_case(case_index=3)
        adapter.close()


@pytest.mark.integration
def test_a_stopped_server_is_unavailable(platform: SandboxPlatform) -> None:
    with serve(create_app(platform=platform)) as url:
        adapter = HttpBpmAdapter(url, timeout_s=2.0, retries=2, backoff_s=0.01)
        case_id = adapter.open_case("refund_damaged")
        state = adapter.observe(case_id)
    calls: list[Callable[[], object]] = [
        lambda: adapter.observe(case_id),
        lambda: adapter.apply(case_id, ORDER, "k-1", expected_etag=state.etag),
        lambda: adapter.ended(case_id),
        lambda: adapter.outcome(case_id),
        lambda: adapter.open_case("refund_damaged"),
    ]
    for call in calls:
        with pytest.raises(BpmUnavailableError) as unavailable:
            call()
        assert unavailable.value.retryable
    assert platform.case(case_id).step == 0
    adapter.close()


class LoseFirstActionAnswer:
    """ASGI wrapper: the first POST of an action reaches the BPM and is applied, but its answer is lost (503)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.lost = 0

    async def __call__(self, scope: dict[str, Any], receive: ASGIApp, send: ASGIApp) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith("/actions")
            and not self.lost
        ):
            self.lost += 1

            async def drop(message: dict[str, Any]) -> None:
                return None

            await self.app(scope, receive, drop)
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"answer lost"})
            return
        await self.app(scope, receive, send)


@pytest.mark.integration
def test_apply_is_retried_with_its_key_after_a_lost_answer(platform: SandboxPlatform) -> None:
    flaky = LoseFirstActionAnswer(create_app(platform=platform))
    with serve(flaky) as url:
        adapter = HttpBpmAdapter(url, retries=2, backoff_s=0.01)
        case_id = adapter.open_case("refund_damaged")
        state = adapter.apply(case_id, ORDER, "k-1", expected_etag=adapter.observe(case_id).etag)
        adapter.close()
    assert flaky.lost == 1
    assert state.step == 1  # applied once, although sent twice
    assert platform.case(case_id).actions == [ORDER]


@pytest.mark.integration
def test_a_server_that_keeps_failing_is_unavailable(platform: SandboxPlatform) -> None:
    async def broken(scope: dict[str, Any], receive: ASGIApp, send: ASGIApp) -> None:
        if scope["type"] != "http":  # lifespan: accept start-up and shut-down
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with serve(broken) as url:
        adapter = HttpBpmAdapter(url, retries=2, backoff_s=0.01)
        with pytest.raises(BpmUnavailableError, match="HTTP 500"):
            adapter.observe("C7-000000")
        adapter.close()
