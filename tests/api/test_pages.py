"""The two pages in a real browser (Debian's Chromium driven by Playwright): the operator copilot sidebar answers a
deferral that arrives live, the supervisor dashboard demotes a slice and flips the kill switch, and both pages are
screenshotted into docs/img."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.api.conftest import QUEUES, Running, http, open_case_ids, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
TIMEOUT_MS = 30_000
SLICE = ("plan_change", "fill_field")  # no test session runs plan_change: changing its stage disturbs nothing


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser | None]:
    """One Chromium per module; None when it is not installed (each test then fails with the reason)."""
    if not CHROMIUM.exists():
        yield None
        return
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def open_page(browser: Browser | None) -> Iterator[Page]:
    if browser is None:
        pytest.fail(f"chromium missing: run make system-deps ({CHROMIUM} does not exist)")
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
        assert not errors, f"JavaScript errors in the page: {errors}"
    finally:
        context.close()


def login(page: Page, url: str, token: str) -> None:
    page.goto(url)
    expect(page.locator("#login")).to_be_visible()
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("login-button").click()
    expect(page.locator("#app")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('bpm-autopilot.token')") == token
    assert token not in page.url


def queue_case(running: Running) -> str:
    """A free open case whose process is one of the operator's queues."""
    platform = running.service.runtime.platform
    assert platform is not None
    for case_id in open_case_ids(running, 30):
        if platform.cases[case_id].spec.process_id in QUEUES:
            return case_id
    return platform.open_case("address_change")


def start_session(running: Running, url: str, case_id: str) -> str:
    with http(url, running.tokens.service) as api:
        response = api.post("/api/v1/sessions", json={"case_ids": [case_id]})
        assert response.status_code == 202, response.text
        session_ids: list[str] = response.json()["session_ids"]
    return session_ids[0]


def session_detail(running: Running, url: str, session_id: str) -> dict[str, Any]:
    with http(url, running.tokens.service) as api:
        response = api.get(f"/api/v1/sessions/{session_id}")
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
    return detail


def test_sidebar_login_is_rejected_with_a_bad_token(browser: Browser | None, live_url: str, running: Running) -> None:
    with open_page(browser) as page:
        page.goto(f"{live_url}/ui/sidebar")
        page.get_by_test_id("token-input").fill("ap_not-a-valid-token-at-all")
        page.get_by_test_id("login-button").click()
        expect(page.get_by_test_id("login-error")).to_contain_text("not valid")
        expect(page.locator("#app")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('bpm-autopilot.token')") is None
        # a supervisor page refuses an operator token (403 on the overview)
        page.goto(f"{live_url}/ui/dashboard")
        page.get_by_test_id("token-input").fill(running.tokens.operator)
        page.get_by_test_id("login-button").click()
        expect(page.get_by_test_id("login-error")).to_contain_text("403")


def test_operator_corrects_a_live_deferral(browser: Browser | None, live_url: str, running: Running) -> None:
    with open_page(browser) as page:
        login(page, f"{live_url}/ui/sidebar", running.tokens.operator)
        expect(page.get_by_test_id("who")).to_contain_text("address_change")
        expect(page.get_by_test_id("stream-status")).to_have_attribute("data-state", "open")
        page.evaluate("window.__notReloaded = true")

        case_id = queue_case(running)
        session_id = start_session(running, live_url, case_id)

        item = page.locator(f'[data-testid="inbox-item"][data-session-id="{session_id}"]')
        expect(item).to_be_visible()  # arrived over the event stream
        assert page.evaluate("window.__notReloaded") is True, "the page reloaded"
        expect(item.get_by_test_id("inbox-age")).to_have_text(re.compile(r"^\d+[smh]"))
        deferral_id = item.get_attribute("data-deferral-id")
        assert deferral_id

        item.click()
        expect(page.get_by_test_id("case-process")).to_have_text("address_change")
        expect(page.get_by_test_id("case-id")).to_have_text(case_id)
        expect(page.get_by_test_id("proposal-action")).not_to_be_empty()
        expect(page.get_by_test_id("decision-reason")).to_contain_text("copilot")
        expect(page.get_by_test_id("proposal-confidence")).to_contain_text("policy probability")

        row = running.service.store.get_deferral(deferral_id)
        assert row is not None
        proposal = row.deferral.proposal

        page.get_by_test_id("btn-correct").click()
        expect(page.get_by_test_id("correct-form")).to_be_visible()
        if proposal.alternatives:
            page.get_by_test_id("alternative-select").select_option("0")
            expected = proposal.alternatives[0].action.model_dump(mode="json")
        else:  # no runner-up: the JSON editor, prefilled with the proposal, is the fallback
            page.get_by_test_id("alternative-select").select_option("custom")
            expected = proposal.action.model_dump(mode="json")
        assert json.loads(page.get_by_test_id("corrected-json").input_value()) == expected
        page.get_by_test_id("correct-reason").select_option("acceptable_alternative")
        page.get_by_test_id("btn-submit-correct").click()

        result = page.get_by_test_id("answer-result")
        expect(result).to_have_attribute("data-result", "accepted")
        expect(result).to_contain_text("Correction sent")
        expect(result).to_contain_text(session_id)
        expect(page.locator(f'[data-testid="inbox-item"][data-deferral-id="{deferral_id}"]')).to_have_count(0)

    answered = running.service.store.get_deferral(deferral_id)
    assert answered is not None and answered.answer is not None
    assert answered.answer.verdict.value == "correct"
    assert answered.answer.reason is not None and answered.answer.reason.value == "acceptable_alternative"
    assert answered.answer.corrected_action is not None
    assert answered.answer.corrected_action.model_dump(mode="json") == expected
    assert answered.operator_id == "olga"

    def resumed() -> dict[str, Any] | None:
        detail = session_detail(running, live_url, session_id)
        mine = [d for d in detail["deferrals"] if d["deferral_id"] == deferral_id]
        assert mine and mine[0]["verdict"] == "correct"
        moved = detail["step"] > row.deferral.state.step or len(detail["deferrals"]) > 1
        return detail if moved or detail["status"] in {"completed", "failed", "stopped"} else None

    detail = wait_for(resumed, timeout=30.0)
    assert detail["actions_applied"] >= 1 or len(detail["deferrals"]) > 1


def test_sidebar_shows_a_stale_answer(browser: Browser | None, live_url: str, running: Running) -> None:
    """An answer that lost the race (the step was answered meanwhile, and the page did not hear of it because its
    event stream is cut) gets the server's 409 and the stale message; a step answered while the stream is up
    is marked as no longer pending without a click."""
    session_id = start_session(running, live_url, queue_case(running))

    def pending() -> Any:
        rows = [r for r in running.service.store.pending_deferrals(list(QUEUES)) if r.session_id == session_id]
        return rows[0] if rows else None

    deferral = wait_for(pending, timeout=30.0)
    with open_page(browser) as page:
        page.route("**/api/v1/inbox/stream*", lambda route: route.abort())
        login(page, f"{live_url}/ui/sidebar", running.tokens.operator)
        item = page.locator(f'[data-testid="inbox-item"][data-deferral-id="{deferral.deferral_id}"]')
        item.click()
        expect(page.get_by_test_id("btn-accept")).to_be_enabled()
        with http(live_url, running.tokens.operator) as api:  # someone else takes the case over meanwhile
            body = {
                "proposal_id": deferral.proposal.proposal_id,
                "state_etag": deferral.state.etag,
                "verdict": "reject",
                "reason": "other",
            }
            response = api.post(f"/api/v1/inbox/{deferral.deferral_id}/answer", json=body)
            assert response.status_code == 200, response.text
        page.get_by_test_id("btn-accept").click()
        result = page.get_by_test_id("answer-result")
        expect(result).to_have_attribute("data-result", "stale")
        expect(result).to_contain_text("Stale")

    session_id = start_session(running, live_url, queue_case(running))
    deferral = wait_for(pending, timeout=30.0)
    with open_page(browser) as page:
        login(page, f"{live_url}/ui/sidebar", running.tokens.operator)
        page.locator(f'[data-testid="inbox-item"][data-deferral-id="{deferral.deferral_id}"]').click()
        expect(page.get_by_test_id("btn-accept")).to_be_enabled()
        with http(live_url, running.tokens.operator) as api:
            body = {
                "proposal_id": deferral.proposal.proposal_id,
                "state_etag": deferral.state.etag,
                "verdict": "accept",
            }
            assert api.post(f"/api/v1/inbox/{deferral.deferral_id}/answer", json=body).status_code == 200
        expect(page.get_by_test_id("answer-result")).to_contain_text("no longer pending")
        expect(page.get_by_test_id("btn-accept")).to_be_disabled()


def test_supervisor_demotes_a_slice_and_flips_the_kill_switch(
    browser: Browser | None, live_url: str, running: Running
) -> None:
    process_id, action_type = SLICE
    key = f"{process_id}/{action_type}"
    stage_url = f"/api/v1/supervisor/slices/{process_id}/{action_type}/stage"
    with http(live_url, running.tokens.supervisor) as api:
        response = api.post(stage_url, json={"stage": "autopilot", "reason": "test setup", "pin": True})
        assert response.status_code == 200, response.text

    with open_page(browser) as page:
        login(page, f"{live_url}/ui/dashboard", running.tokens.supervisor)
        row = page.locator(f'[data-testid="slice-row"][data-slice="{key}"]')
        expect(row).to_have_attribute("data-stage", "autopilot")
        expect(row.get_by_test_id("slice-pinned")).to_have_text("sam")
        expect(page.get_by_test_id("tile-automated")).to_be_visible()
        expect(page.get_by_test_id("critic-info")).to_contain_text("critic-test-1")

        row.get_by_test_id("btn-demote").click()
        form = page.get_by_test_id("stage-form")
        expect(form).to_be_visible()
        expect(form).to_contain_text("Demote")
        page.get_by_test_id("stage-confirm").click()
        expect(page.get_by_test_id("stage-error")).to_contain_text("reason")  # a reason is required
        page.get_by_test_id("stage-reason").fill("ui test: too many corrections")
        page.get_by_test_id("stage-confirm").click()
        expect(form).to_be_hidden()
        expect(row).to_have_attribute("data-stage", "copilot")
        expect(row.get_by_test_id("slice-stage")).to_have_text("copilot")
        event = page.locator(f'[data-testid="event"][data-slice="{key}"]').first
        expect(event).to_contain_text("autopilot -> copilot")
        expect(event).to_contain_text("ui test: too many corrections")

        with http(live_url, running.tokens.supervisor) as api:
            slices = {
                f"{s['slice']['process_id']}/{s['slice']['action_type']}": s
                for s in api.get("/api/v1/supervisor/slices").json()
            }
        assert slices[key]["stage"] == "copilot"
        assert slices[key]["pinned_by"] == "sam"
        assert slices[key]["reason"].endswith("ui test: too many corrections")

        # hand it back to the automatic rules
        row.get_by_test_id("btn-unpin").click()
        expect(row.get_by_test_id("slice-pinned")).to_have_text("")

        # the kill switch, on and off
        state = page.get_by_test_id("kill-state")
        expect(state).to_have_attribute("data-on", "false")
        page.get_by_test_id("kill-reason").fill("ui test: drill")
        page.get_by_test_id("kill-toggle").click()
        expect(state).to_have_attribute("data-on", "true")
        with http(live_url, running.tokens.supervisor) as api:
            kill = api.get("/api/v1/supervisor/kill-switch").json()
        assert kill["on"] is True and kill["reason"] == "ui test: drill" and kill["actor"] == "sam"
        page.get_by_test_id("kill-reason").fill("ui test: drill over")
        page.get_by_test_id("kill-toggle").click()
        expect(state).to_have_attribute("data-on", "false")
        with http(live_url, running.tokens.supervisor) as api:
            kill = api.get("/api/v1/supervisor/kill-switch").json()
        assert kill["on"] is False and kill["reason"] == "ui test: drill over"

    with http(live_url, running.tokens.supervisor) as api:
        final = [s for s in api.get("/api/v1/supervisor/slices").json() if s["slice"]["process_id"] == process_id]
    assert final and all(s["pinned_by"] is None for s in final)


def test_dashboard_shows_the_critic_plots(
    browser: Browser | None, live_url: str, running: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The champion critic's PNGs are fetched with the token (an <img src> could not send it) and shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(3, 2))
    axes.plot([0, 1], [0, 1], "--")
    figure.savefig(tmp_path / "reliability.png")
    plt.close(figure)
    monkeypatch.setattr(running.service, "plots", lambda: [tmp_path / "reliability.png"])
    with open_page(browser) as page:
        login(page, f"{live_url}/ui/dashboard", running.tokens.supervisor)
        image = page.locator('[data-testid="plot"][data-name="reliability.png"]')
        expect(image).to_be_visible()
        assert str(image.get_attribute("src")).startswith("blob:")
        # Polled from here: the pages' CSP forbids the string evaluation wait_for_function relies on.
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while not page.evaluate("document.querySelector('[data-name=\"reliability.png\"]').naturalWidth > 0"):
            assert time.monotonic() < deadline, "the plot never loaded"
            page.wait_for_timeout(50)


def test_screenshots(browser: Browser | None, live_url: str, running: Running) -> None:
    """docs/img/sidebar.png (a deferral selected) and docs/img/dashboard.png, overwritten on every run."""
    IMG.mkdir(parents=True, exist_ok=True)
    with http(live_url, running.tokens.operator) as api:
        pending = api.get("/api/v1/inbox").json()["items"]
    if not pending:
        start_session(running, live_url, queue_case(running))
    with open_page(browser) as page:
        login(page, f"{live_url}/ui/sidebar", running.tokens.operator)
        first = page.get_by_test_id("inbox-item").first
        expect(first).to_be_visible()
        first.click()
        expect(page.get_by_test_id("proposal-action")).not_to_be_empty()
        page.get_by_test_id("btn-correct").click()
        page.screenshot(path=str(IMG / "sidebar.png"))
    with open_page(browser) as page:
        login(page, f"{live_url}/ui/dashboard", running.tokens.supervisor)
        expect(page.get_by_test_id("slice-row").first).to_be_visible()
        expect(page.locator("#sparkline polyline").first).to_be_attached(timeout=TIMEOUT_MS)
        page.screenshot(path=str(IMG / "dashboard.png"), full_page=True)
    for name in ("sidebar.png", "dashboard.png"):
        data = (IMG / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 1_500_000, (name, len(data))
