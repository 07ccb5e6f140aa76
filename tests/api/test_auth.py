"""Authentication and authorisation: 401 without a valid token, the role table (403 outside a role's rights), the
token file (hashes only, rotation and revocation without a restart, an invalid file keeps the last good tokens),
log redaction, and ``autopilot tokens issue|revoke|list``."""

from __future__ import annotations

import json
import logging
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.api.auth import Role, TokenStore, hash_token, issue_token, revoke_token, token_summary
from service.api.redaction import RedactingFilter, redact
from service.cli import main
from tests.api.conftest import Running, wait_for

# ---- the route table ------------------------------------------------------------------------------------------------

SUGGEST = "$suggest"  # placeholders, replaced by real payloads (a state, a proposal) in the tests
FEEDBACK = "$feedback"
ANSWER = {"proposal_id": "p-none", "state_etag": "e-none", "verdict": "accept"}
STAGE = {"stage": "copilot", "reason": "auth test", "pin": False}
KILL_OFF = {"on": False, "reason": "auth test"}
SLICE = "/api/v1/supervisor/slices/delivery_status/close_chat"

# (method, path, body): every route that needs a token
PROTECTED: list[tuple[str, str, Any]] = [
    ("POST", "/api/v1/copilot/suggest", SUGGEST),
    ("POST", "/api/v1/copilot/feedback", FEEDBACK),
    ("GET", "/api/v1/inbox", None),
    ("GET", "/api/v1/inbox/stream", None),
    ("POST", "/api/v1/inbox/no-such-deferral/answer", ANSWER),
    ("POST", "/api/v1/sessions", {"case_ids": ["no-such-case"]}),
    ("GET", "/api/v1/sessions", None),
    ("GET", "/api/v1/sessions/session-no-such-case", None),
    ("POST", "/api/v1/sessions/session-no-such-case/stop", None),
    ("GET", "/api/v1/supervisor/overview", None),
    ("GET", "/api/v1/supervisor/slices", None),
    ("POST", f"{SLICE}/stage", STAGE),
    ("POST", f"{SLICE}/unpin", None),
    ("GET", "/api/v1/supervisor/kill-switch", None),
    ("PUT", "/api/v1/supervisor/kill-switch", KILL_OFF),
    ("GET", "/api/v1/supervisor/events", None),
    ("GET", "/api/v1/supervisor/audit-log", None),
    ("GET", "/api/v1/supervisor/plots/calibration.png", None),
]

# (method, path, body, role, expected status). A status other than 401/403 means the call got past the role check;
# the bodies name unknown things (404) or harmless changes, so the table changes nothing that matters.
# The stream is left out for the roles that may read it: its 200 never ends.
ROLE_TABLE: list[tuple[str, str, Any, str, int]] = [
    # copilot: everyone suggests; feedback is for humans
    ("POST", "/api/v1/copilot/suggest", SUGGEST, "operator", 200),
    ("POST", "/api/v1/copilot/suggest", SUGGEST, "service", 200),
    ("POST", "/api/v1/copilot/suggest", SUGGEST, "supervisor", 200),
    ("POST", "/api/v1/copilot/feedback", FEEDBACK, "operator", 201),
    ("POST", "/api/v1/copilot/feedback", FEEDBACK, "supervisor", 201),
    ("POST", "/api/v1/copilot/feedback", FEEDBACK, "service", 403),
    # inbox: operators and supervisors, never the service
    ("GET", "/api/v1/inbox", None, "operator", 200),
    ("GET", "/api/v1/inbox", None, "supervisor", 200),
    ("GET", "/api/v1/inbox", None, "service", 403),
    ("GET", "/api/v1/inbox/stream", None, "service", 403),
    ("POST", "/api/v1/inbox/no-such-deferral/answer", ANSWER, "operator", 404),
    ("POST", "/api/v1/inbox/no-such-deferral/answer", ANSWER, "supervisor", 404),
    ("POST", "/api/v1/inbox/no-such-deferral/answer", ANSWER, "service", 403),
    # sessions: the service and the supervisor start and stop; everyone reads
    ("POST", "/api/v1/sessions", {"case_ids": ["no-such-case"]}, "service", 404),
    ("POST", "/api/v1/sessions", {"case_ids": ["no-such-case"]}, "supervisor", 404),
    ("POST", "/api/v1/sessions", {"case_ids": ["no-such-case"]}, "operator", 403),
    ("POST", "/api/v1/sessions/session-no-such-case/stop", None, "service", 404),
    ("POST", "/api/v1/sessions/session-no-such-case/stop", None, "supervisor", 404),
    ("POST", "/api/v1/sessions/session-no-such-case/stop", None, "operator", 403),
    ("GET", "/api/v1/sessions", None, "operator", 200),
    ("GET", "/api/v1/sessions", None, "service", 200),
    ("GET", "/api/v1/sessions", None, "supervisor", 200),
    ("GET", "/api/v1/sessions/session-no-such-case", None, "operator", 404),
    ("GET", "/api/v1/sessions/session-no-such-case", None, "service", 404),
    # supervisor routes: the supervisor only (reading slices and the kill switch: everyone)
    ("GET", "/api/v1/supervisor/overview", None, "supervisor", 200),
    ("GET", "/api/v1/supervisor/overview", None, "operator", 403),
    ("GET", "/api/v1/supervisor/overview", None, "service", 403),
    ("POST", f"{SLICE}/stage", STAGE, "supervisor", 200),
    ("POST", f"{SLICE}/stage", STAGE, "operator", 403),
    ("POST", f"{SLICE}/stage", STAGE, "service", 403),
    ("POST", f"{SLICE}/unpin", None, "supervisor", 200),
    ("POST", f"{SLICE}/unpin", None, "operator", 403),
    ("POST", f"{SLICE}/unpin", None, "service", 403),
    ("PUT", "/api/v1/supervisor/kill-switch", KILL_OFF, "supervisor", 200),
    ("PUT", "/api/v1/supervisor/kill-switch", KILL_OFF, "operator", 403),
    ("PUT", "/api/v1/supervisor/kill-switch", KILL_OFF, "service", 403),
    ("GET", "/api/v1/supervisor/events", None, "supervisor", 200),
    ("GET", "/api/v1/supervisor/events", None, "operator", 403),
    ("GET", "/api/v1/supervisor/events", None, "service", 403),
    ("GET", "/api/v1/supervisor/audit-log", None, "supervisor", 200),
    ("GET", "/api/v1/supervisor/audit-log", None, "operator", 403),
    ("GET", "/api/v1/supervisor/audit-log", None, "service", 403),
    ("GET", "/api/v1/supervisor/plots/calibration.png", None, "supervisor", 404),
    ("GET", "/api/v1/supervisor/plots/calibration.png", None, "operator", 403),
    ("GET", "/api/v1/supervisor/slices", None, "operator", 200),
    ("GET", "/api/v1/supervisor/slices", None, "service", 200),
    ("GET", "/api/v1/supervisor/kill-switch", None, "service", 200),
    ("GET", "/api/v1/supervisor/kill-switch", None, "operator", 200),
]


@pytest.fixture(scope="module")
def payloads(client: TestClient, running: Running) -> dict[str, Any]:
    """A real suggest body, and per role a feedback body on a suggestion issued to that role (feedback is accepted
    only from the caller a proposal was suggested to)."""
    platform = running.service.runtime.platform
    assert platform is not None
    for _ in range(10):
        state = running.service.runtime.adapter.observe(platform.open_case(process_id="address_change"))
        suggest = {"state": state.model_dump(mode="json"), "k": 2}
        feedback: dict[str, Any] = {}
        for role in ("supervisor", "operator", "service"):
            answered = client.post("/api/v1/copilot/suggest", json=suggest, headers=running.tokens.header(role))
            assert answered.status_code == 200, answered.text
            proposal = answered.json()["proposal"]
            if proposal is not None:
                feedback[role] = {"state": suggest["state"], "proposal": proposal, "verdict": "accept"}
        if len(feedback) == 3:
            return {SUGGEST: suggest, FEEDBACK: feedback}
    pytest.fail("the policy proposed nothing for 10 fresh cases")


def call(
    client: TestClient,
    method: str,
    path: str,
    body: Any,
    payloads: dict[str, Any],
    headers: dict[str, str],
    role: str = "supervisor",
) -> Any:
    if isinstance(body, str):
        body = payloads[body]
        if isinstance(body, dict) and role in body:  # per role (feedback)
            body = body[role]
    return client.request(method, path, json=body, headers=headers)


# ---- 401 ------------------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer ap_not-a-token-of-anyone-at-all", "Basic b2xnYTpzZWNyZXQ=", "Bearer "],
    ids=["none", "unknown", "basic", "empty"],
)
def test_no_valid_token_is_401(
    client: TestClient,
    payloads: dict[str, Any],
    method: str,
    path: str,
    body: Any,
    authorization: str | None,
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = call(client, method, path, body, payloads, headers)
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate") == "Bearer"
    assert "authorization" in response.json()["detail"]


@pytest.mark.integration
def test_a_wrong_token_never_reaches_the_body_check(client: TestClient) -> None:
    # no token and an invalid body: the 401 comes first, the body is not even looked at
    response = client.post("/api/v1/sessions", json={"nonsense": True})
    assert response.status_code == 401


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_need_no_token(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


# ---- roles ----------------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "path", "body", "role", "expected"),
    ROLE_TABLE,
    ids=[f"{r} {m} {p} -> {e}" for m, p, _, r, e in ROLE_TABLE],
)
def test_role_table(
    client: TestClient,
    running: Running,
    payloads: dict[str, Any],
    method: str,
    path: str,
    body: Any,
    role: str,
    expected: int,
) -> None:
    response = call(client, method, path, body, payloads, running.tokens.header(role), role)
    assert response.status_code == expected, response.text
    if expected == 403:
        assert "role" in response.json()["detail"]


def test_the_table_covers_every_protected_route_and_role() -> None:
    covered = {(m, p) for m, p, _, _, _ in ROLE_TABLE}
    assert covered == {(m, p) for m, p, _ in PROTECTED}
    assert {r for *_, r, _ in ROLE_TABLE} == {"operator", "service", "supervisor"}


@pytest.mark.integration
def test_the_app_has_no_unlisted_protected_route(running: Running) -> None:
    """Every API route is in PROTECTED (a new route must be added to the table)."""
    api_routes = {
        (method, route.path)
        for route in running.app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/api/")
        for method in route.methods or ()
    }
    listed = {
        (method, route.path)
        for method, path, _ in PROTECTED
        for route in running.app.routes
        if isinstance(route, APIRoute) and method in (route.methods or ()) and route.path_regex.match(path)
    }
    assert api_routes == listed


# ---- the token file -------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_token_file_holds_only_hashes(running: Running) -> None:
    text = running.tokens_file.read_text()
    data = json.loads(text)
    assert {e["name"] for e in data["tokens"]} >= {"olga", "oscar", "sam", "svc"}
    for token in (running.tokens.operator, running.tokens.other_operator, running.tokens.supervisor):
        assert token.startswith("ap_")
        assert token not in text
        assert token.removeprefix("ap_") not in text
        assert hash_token(token) in text
    assert running.tokens.service not in text
    assert stat.S_IMODE(running.tokens_file.stat().st_mode) == 0o600


@pytest.mark.integration
def test_rotation_and_revocation_without_restart(client: TestClient, running: Running) -> None:
    path = running.tokens_file

    def inbox(token: str) -> int:
        return client.get("/api/v1/inbox", headers={"Authorization": f"Bearer {token}"}).status_code

    first = issue_token(path, "rita", Role.OPERATOR, ["address_change"])
    assert inbox(first) == 200
    second = issue_token(path, "rita", Role.OPERATOR, ["address_change"])  # same name: rotation
    assert second != first
    assert inbox(first) == 401
    assert inbox(second) == 200
    assert [e["name"] for e in token_summary(path)].count("rita") == 1
    assert inbox(running.tokens.operator) == 200  # the others are untouched

    assert revoke_token(path, "rita")
    assert inbox(second) == 401
    assert inbox(running.tokens.operator) == 200
    assert not revoke_token(path, "rita")


@pytest.mark.integration
def test_an_invalid_token_file_keeps_the_previous_tokens(
    client: TestClient, running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    path = running.tokens_file
    good = path.read_bytes()
    headers = running.tokens.header("operator")
    assert client.get("/api/v1/inbox", headers=headers).status_code == 200
    try:
        for broken in (b"{not json", b'{"tokens": [{"name": "x", "role": "god", "sha256": "00"}]}', b""):
            path.write_bytes(broken)
            with caplog.at_level(logging.ERROR, logger="service.api.auth"):
                assert client.get("/api/v1/inbox", headers=headers).status_code == 200
            assert any("keeping the previous tokens" in r.getMessage() for r in caplog.records)
            caplog.clear()
    finally:
        path.write_bytes(good)
    assert client.get("/api/v1/inbox", headers=headers).status_code == 200


def test_token_store_unit(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = TokenStore(path, check_interval_s=0.0)
    assert store.authenticate("ap_anything-at-all-here") is None  # no file: nobody
    token = issue_token(path, "alice", "operator", ["q1", "q2"])
    principal = store.authenticate(token)
    assert principal is not None
    assert (principal.name, principal.role, principal.queues) == ("alice", Role.OPERATOR, ("q1", "q2"))
    assert principal.may_answer("q1") and not principal.may_answer("q3")
    assert store.authenticate(token + "x") is None
    assert store.names() == ["alice"]
    path.unlink()
    assert store.authenticate(token) is None  # the file disappeared: no token is valid


def test_token_store_rereads_only_every_check_interval(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = issue_token(path, "bob", "supervisor")
    store = TokenStore(path, check_interval_s=3600.0)
    assert store.authenticate(token) is not None
    revoke_token(path, "bob")
    assert store.authenticate(token) is not None  # not re-read yet
    assert store.names() == []  # names() forces a re-read
    assert store.authenticate(token) is None


@pytest.mark.parametrize(
    ("name", "role", "queues", "field"),
    [
        ("op", "operator", [], "queues"),
        ("sup", "supervisor", ["q"], "queues"),
        ("svc", "service", ["q"], "queues"),
        ("bad name!", "service", [], "name"),
        ("x", "admin", [], "admin"),
    ],
)
def test_issue_token_refuses(tmp_path: Path, name: str, role: str, queues: list[str], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        issue_token(tmp_path / "tokens.json", name, role, queues)


def test_issue_token_refuses_a_short_token(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="token"):
        issue_token(tmp_path / "tokens.json", "carol", "service", token="short")


# ---- redaction ------------------------------------------------------------------------------------------------------

SECRET = "ap_" + "S3cr3tT0k3nV4lue_abcdefghijklmnop"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


@pytest.fixture
def redacted_logger() -> Iterator[tuple[logging.Logger, Collect]]:
    logger = logging.getLogger("tests.api.redaction")
    handler = Collect()
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_redaction_filter_masks_tokens_and_customer_text(redacted_logger: tuple[logging.Logger, Collect]) -> None:
    logger, handler = redacted_logger
    logger.info("headers: Authorization: Bearer %s", SECRET)
    logger.info("got token %s from the file", SECRET)
    logger.warning("request body %s", json.dumps({"text": "customer secret", "case_id": "case-17"}))
    logger.error("chat: {'message': 'my card number is 4111', 'value': \"also secret\"}")
    logger.info("authorization: bearer abc.def-ghi")
    logger.info("nothing to hide in case %s", "case-18")
    joined = "\n".join(handler.messages)
    assert SECRET not in joined
    assert SECRET.removeprefix("ap_") not in joined
    assert "customer secret" not in joined
    assert "4111" not in joined
    assert "also secret" not in joined
    assert "abc.def-ghi" not in joined
    assert "[redacted]" in handler.messages[0]
    assert "case-17" in handler.messages[2]  # what is not secret stays readable
    assert handler.messages[5] == "nothing to hide in case case-18"


def test_redaction_filter_with_caplog(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO):
            logging.getLogger("tests.api.caplog").info('Bearer %s body={"text": "customer secret"}', SECRET)
    finally:
        caplog.handler.filters.clear()
    assert SECRET not in caplog.text
    assert "customer secret" not in caplog.text
    assert "Bearer [redacted]" in caplog.text


def test_redact_function() -> None:
    assert redact(f"Bearer {SECRET}") == "Bearer [redacted]"
    assert redact(f"token={SECRET}") == "token=ap_[redacted]"
    assert "customer secret" not in redact('{"transcript": "customer secret"}')
    assert redact("ap_short") == "ap_short"  # too short to be a token
    assert redact("plain text") == "plain text"


@pytest.mark.integration
def test_access_log_of_a_real_request_does_not_show_the_token(running: Running) -> None:
    """The app under uvicorn with access logging and the filter: a token in the header never shows, and one that
    leaked into a URL is masked."""
    handler = Collect()
    handler.addFilter(RedactingFilter())
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    config = uvicorn.Config(
        running.app, host="127.0.0.1", port=0, log_config=None, log_level="info", access_log=True, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=10.0)
        assert server.started, "the API did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        token = running.tokens.operator
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as http_client:
            ok = http_client.get("/api/v1/inbox", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200
            leaked = http_client.get("/api/v1/inbox", params={"access_token": token})
            assert leaked.status_code == 401
        # uvicorn logs a request once its response is sent, so the client can be ahead of the log.
        wait_for(lambda: sum("/api/v1/inbox" in m for m in handler.messages) >= 2, timeout=10.0)
    finally:
        server.should_exit = True
        thread.join(10.0)
        access.removeHandler(handler)
    joined = "\n".join(handler.messages)
    assert "/api/v1/inbox" in joined, joined  # the requests were logged
    assert token not in joined
    assert token.removeprefix("ap_") not in joined


# ---- autopilot tokens -----------------------------------------------------------------------------------------------


def test_cli_issue_list_rotate_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    args = ["tokens", "issue", "--name", "dora", "--role", "operator", "--queue", "q1", "--queue", "q2"]
    assert main([*args, "--file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ap_")
    assert token not in path.read_text()
    assert TokenStore(path).authenticate(token) is not None

    assert main(["tokens", "issue", "--name", "sv", "--role", "supervisor", "--file", str(path)]) == 0
    capsys.readouterr()
    assert main(["tokens", "list", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    listed = json.loads(out)
    assert listed == [
        {"name": "dora", "role": "operator", "queues": ["q1", "q2"]},
        {"name": "sv", "role": "supervisor", "queues": []},
    ]
    assert "sha256" not in out and token not in out

    assert main([*args, "--file", str(path)]) == 0  # rotation
    rotated = capsys.readouterr().out.strip()
    assert rotated != token
    assert TokenStore(path).authenticate(token) is None
    assert TokenStore(path).authenticate(rotated) is not None
    assert [e["name"] for e in token_summary(path)] == ["sv", "dora"]

    assert main(["tokens", "revoke", "--name", "dora", "--file", str(path)]) == 0
    assert TokenStore(path).authenticate(rotated) is None
    assert [e["name"] for e in token_summary(path)] == ["sv"]


def test_cli_operator_needs_a_queue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    assert main(["tokens", "issue", "--name", "ed", "--role", "operator", "--file", str(path)]) == 2
    captured = capsys.readouterr()
    assert "error:" in captured.err
    assert "queue" in captured.err
    assert captured.out == ""
    assert not path.exists()


def test_cli_only_operators_have_queues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    assert main(["tokens", "issue", "--name", "fay", "--role", "service", "--queue", "q", "--file", str(path)]) == 2
    assert "queues" in capsys.readouterr().err


def test_cli_revoke_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    issue_token(path, "gil", "service")
    assert main(["tokens", "revoke", "--name", "nobody", "--file", str(path)]) == 2
    assert "nobody" in capsys.readouterr().err
    assert [e["name"] for e in token_summary(path)] == ["gil"]


def test_cli_invalid_role_and_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    with pytest.raises(SystemExit) as exited:
        main(["tokens", "issue", "--name", "hal", "--role", "admin", "--file", str(path)])
    assert exited.value.code == 2
    capsys.readouterr()
    path.write_text('{"tokens": [{"name": "x"}]}')
    assert main(["tokens", "list", "--file", str(path)]) == 2
    assert "not a token file" in capsys.readouterr().err
