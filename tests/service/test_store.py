"""RuntimeStore on a real SQLite file, and on a throwaway local PostgreSQL server when one is installed.

Every test runs against both backends (the PostgreSQL ones are marked ``integration`` and skipped with a reason
where no server can be started). Concurrency is real: threads, two store instances on one database, and
spawned processes, one of which dies in the middle of a side effect.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier as BarrierType
from pathlib import Path

import pytest

from critic.store import FeedbackStore
from schemas.actions import ActionType, ClickControl, TransferChat
from schemas.decision import Decision, DecisionOutcome, Deferral, OperatorDecision, RejectReason, Verdict
from schemas.proposal import Proposal, ProposalFeatures
from schemas.qa import QAAnswer, QAItem
from schemas.risk import AutonomyStage, RiskTier, SliceKey
from schemas.screen import ButtonControl, ChatControl, ScreenSchema
from schemas.state import UIState
from service.runtime.qa_store import QAStatus, QAStore
from service.runtime.store import (
    AnswerStatus,
    ApplyRefusedError,
    AuditNote,
    DeferralRow,
    DeferralStatus,
    IssuedStatus,
    LeaseLostError,
    QueueStats,
    RuntimeStore,
    SessionRow,
    SessionStatus,
    WorkerHeartbeat,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SCREEN = ScreenSchema(
    screen_id="triage",
    process_id="billing",
    controls=[ChatControl(id="chat"), ButtonControl(id="ok")],
    transfer_queues=["tier2"],
    resolution_codes=["done"],
)
ACTION = ClickControl(control_id="ok")

# ---- a throwaway PostgreSQL server ---------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in candidates:
        if all((Path(folder) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


class _Postgres:
    """A server listening only on a Unix socket in its own folder, so it collides with no other server."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.count = 0

    def new_database(self) -> str:
        import psycopg
        from psycopg import sql

        self.count += 1
        name = f"runtime_{self.count}"
        with psycopg.connect(host=str(self.base), user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql+psycopg://postgres@/{name}?host={self.base}"


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[_Postgres]:
    folder = _postgres_bin()
    if folder is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl/postgres under /usr/lib/postgresql/*/bin)")
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run a PostgreSQL server as")
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="runtime-store-pg-"))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, log = base / "data", base / "server.log"
    pg_ctl = [*run_as, str(folder / "pg_ctl"), "-D", str(data)]
    try:
        init = subprocess.run(
            [*run_as, str(folder / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr[-500:]}")
        options = f"-k {base} -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        start = subprocess.run(
            [*pg_ctl, "-l", str(log), "-w", "-t", "30", "-o", options, "start"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if start.returncode != 0:
            tail = log.read_text()[-500:] if log.exists() else start.stderr[-500:]
            pytest.skip(f"the PostgreSQL server did not start: {tail}")
        yield _Postgres(base)
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runtime.db'}"
    server: _Postgres = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def store(url: str) -> Iterator[RuntimeStore]:
    with RuntimeStore(url) as runtime_store:
        yield runtime_store


# ---- payloads ------------------------------------------------------------------------------------------------


def _deferral(session_id: str, n: int, queue: str = "billing", created_at: datetime = T0) -> Deferral:
    """The n-th deferral of a session; each n is another state (another etag) and another proposal."""
    state = UIState(session_id=session_id, case_id=f"case-{session_id}", process_id="billing", screen=SCREEN, step=n)
    proposal = Proposal(
        proposal_id=f"{session_id}/p{n}",
        session_id=session_id,
        case_id=state.case_id,
        process_id="billing",
        step=n,
        state_etag=state.etag,
        action=ACTION,
        features=ProposalFeatures(logprob=-0.2, margin=0.3, entropy=0.5, probability=0.8),
    )
    decision = Decision(
        decision_id=f"{session_id}/d{n}",
        proposal_id=proposal.proposal_id,
        session_id=session_id,
        state_etag=state.etag,
        outcome=DecisionOutcome.DEFER,
        slice=SliceKey(process_id="billing", action_type=ActionType.CLICK_CONTROL),
        stage=AutonomyStage.AUTOPILOT,
        tier=RiskTier.CRITICAL,
        score=0.41,
        threshold=0.8,
        reason="score below the slice threshold",
    )
    return Deferral(
        deferral_id=f"{session_id}/f{n}",
        session_id=session_id,
        queue=queue,
        proposal=proposal,
        decision=decision,
        state=state,
        created_at=created_at,
    )


def _answer(deferral: Deferral, verdict: Verdict = Verdict.ACCEPT, operator: str = "op-1") -> OperatorDecision:
    return OperatorDecision(
        proposal_id=deferral.proposal.proposal_id,
        session_id=deferral.session_id,
        state_etag=deferral.proposal.state_etag,
        verdict=verdict,
        reason=None if verdict == Verdict.ACCEPT else RejectReason.OTHER,
        operator_id=operator,
    )


def _session(store: RuntimeStore, session_id: str) -> SessionRow:
    row = store.get_session(session_id)
    assert row is not None, session_id
    return row


def _deferral_row(store: RuntimeStore, deferral_id: str) -> DeferralRow:
    row = store.get_deferral(deferral_id)
    assert row is not None, deferral_id
    return row


def _running(store: RuntimeStore, session_id: str = "s1") -> str:
    assert store.create_session(session_id, f"case-{session_id}", "billing")
    return session_id


# ---- sessions ------------------------------------------------------------------------------------------------


def test_create_session_is_idempotent(store: RuntimeStore) -> None:
    assert store.create_session("s1", "case-1", "billing") is True
    assert store.create_session("s1", "case-OTHER", "returns") is False
    row = store.get_session("s1")
    assert row is not None
    assert (row.case_id, row.process_id, row.status, row.owner) == ("case-1", "billing", SessionStatus.RUNNING, None)
    assert (row.step, row.actions_applied, row.actions_deferred, row.automated) == (0, 0, 0, True)
    assert row.started_at.tzinfo is UTC and row.ended_at is None and row.outcome is None
    assert store.get_session("nope") is None
    store.create_session("s2", "case-2", "billing")
    assert [s.session_id for s in store.sessions()] in (["s2", "s1"], ["s1", "s2"])  # same-microsecond starts
    assert store.sessions(limit=1)[0].session_id in ("s1", "s2")
    assert store.sessions(status="parked") == []
    counts = store.counts_by_status()
    assert counts == {s.value: 0 for s in SessionStatus} | {"running": 2}


def test_finish_first_end_wins_and_bump(store: RuntimeStore) -> None:
    sid = _running(store)
    assert store.bump(sid, applied=2, deferred=1, step=3)
    assert store.bump(sid, automated=True)  # True does not resurrect anything: the flag only clears
    row = store.get_session(sid)
    assert row is not None and (row.actions_applied, row.actions_deferred, row.step, row.automated) == (2, 1, 3, True)
    assert store.bump(sid, automated=False) and store.bump(sid, automated=True)
    row = store.get_session(sid)
    assert row is not None and row.automated is False
    assert store.bump("nope", applied=1) is False

    assert store.finish(sid, SessionStatus.STOPPED, {"by": "supervisor"}) is True
    assert store.finish(sid, "completed", {"resolution": "done"}) is False  # a worker finishing late
    row = store.get_session(sid)
    assert row is not None and row.status == SessionStatus.STOPPED and row.outcome == {"by": "supervisor"}
    assert row.ended_at is not None and row.owner is None
    assert store.finish("nope", "failed", {}) is False
    assert store.counts_by_status()["stopped"] == 1


def test_bad_input_names_the_field(store: RuntimeStore) -> None:
    sid = _running(store)
    cases = [
        ("session_id", lambda: store.create_session("", "c", "p")),
        ("lease_s", lambda: store.claim(sid, "w1", 0)),
        ("lease_s", lambda: store.renew("w1", float("nan"))),
        ("worker_id", lambda: store.claim(sid, "", 5)),
        ("status", lambda: store.finish(sid, "running", {})),
        ("status", lambda: store.finish(sid, "exploded", {})),
        ("status", lambda: store.sessions(status="exploded")),
        ("outcome", lambda: store.finish(sid, "failed", {"error": object()})),
        ("applied", lambda: store.bump(sid, applied=-1)),
        ("step", lambda: store.bump(sid, step=-2)),
        ("details", lambda: store.audit("op", "stop", sid, {"x": {1, 2}})),
        ("actor", lambda: store.audit("", "stop", sid, {})),
        ("limit", lambda: store.pending_deferrals(limit=0)),
        ("queues", lambda: store.pending_deferrals("billing")),
        ("action", lambda: store.apply_once("k", sid, 0, "click ok", lambda: None)),  # type: ignore[arg-type]
        ("session_id", lambda: store.apply_once("k", "nope", 0, ACTION, lambda: None)),
        ("session_id", lambda: store.park("nope", _deferral("nope", 0))),
        ("deferral.session_id", lambda: store.park(sid, _deferral("other", 0))),
        ("worker_id", lambda: store.park(sid, _deferral(sid, 0), worker_id="")),
        ("include_parked", lambda: store.expired_sessions(include_parked="yes")),  # type: ignore[arg-type]
        ("status", lambda: store.owned_sessions("w1", status="completed")),
        ("idempotency_key", lambda: store.drop_reservation("")),
    ]
    for field, call in cases:
        with pytest.raises(ValueError, match=rf"^{field}:"):
            call()
    assert _session(store, sid).status == "running"  # none of the bad calls changed anything


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not a url",
        "sqlite://",  # in memory: nothing shared between connections, nothing durable
        "sqlite:///:memory:",
        "oracle://scott:tiger-secret@db.example/orcl",
        "nosuchdb+nodriver://u:hunter2-secret@h/db",
    ],
)
def test_bad_url_is_a_value_error_naming_url(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^url:") as caught:
        RuntimeStore(bad)
    assert "secret" not in str(caught.value)  # a password in the URL is never echoed


@pytest.mark.integration
def test_the_runtime_and_feedback_stores_open_a_bare_postgresql_url_alike(postgres_server: _Postgres) -> None:
    url = postgres_server.new_database().replace("postgresql+psycopg://", "postgresql://")
    runtime = RuntimeStore(url)
    feedback = FeedbackStore(url)  # the nightly job's store, on the same database
    try:
        assert runtime.engine.url.drivername == feedback.engine.url.drivername == "postgresql+psycopg"
        assert feedback.count() == 0 and runtime.get_session("none") is None
    finally:
        feedback.close()
        runtime.close()


# ---- leases --------------------------------------------------------------------------------------------------


def test_claim_renew_release_and_takeover_after_expiry(store: RuntimeStore) -> None:
    sid = _running(store)
    assert store.expired_sessions(now=T0) == [sid]  # created, never claimed: up for grabs
    assert store.claim(sid, "w1", 30, now=T0)
    assert not store.claim(sid, "w2", 30, now=T0 + timedelta(seconds=10))  # w1's lease is valid
    assert store.claim(sid, "w1", 30, now=T0 + timedelta(seconds=20))  # the owner re-claims: extends to +50
    assert store.expired_sessions(now=T0 + timedelta(seconds=49)) == []
    assert store.owned_sessions("w1", now=T0 + timedelta(seconds=49)) == [sid]

    dead = T0 + timedelta(seconds=51)  # w1 died: no renewal
    assert store.expired_sessions(now=dead) == [sid]
    assert store.claim(sid, "w2", 30, now=dead)
    assert not store.claim(sid, "w1", 30, now=dead)  # the old owner cannot grab it back
    row = store.get_session(sid)
    assert row is not None and row.owner == "w2" and row.lease_until == dead + timedelta(seconds=30)
    assert store.renew("w1", 30, now=dead) == 0  # w1 learns it lost the session
    assert store.owned_sessions("w1", now=dead) == []
    assert store.renew("w2", 60, now=dead) == 1
    assert store.expired_sessions(now=dead + timedelta(seconds=59)) == []

    assert not store.release(sid, "w1")
    assert store.release(sid, "w2")
    assert store.expired_sessions(now=dead) == [sid]  # released: another worker may take it at once
    assert store.claim(sid, "w3", 30, now=dead)


def test_ended_and_parked_sessions_are_not_taken_over(store: RuntimeStore) -> None:
    done, parked = _running(store, "done"), _running(store, "parked")
    store.finish(done, "completed", {})
    assert not store.claim(done, "w1", 30, now=T0)
    assert store.claim(parked, "w1", 30, now=T0)
    assert store.park(parked, _deferral(parked, 0))
    late = T0 + timedelta(hours=1)
    assert store.expired_sessions(now=late) == []  # waiting for an operator: nothing to take over yet
    assert store.answer(_answer(_deferral(parked, 0))).result == AnswerStatus.ACCEPTED
    assert store.expired_sessions(now=late) == [parked]  # running again, and its owner is gone


def test_expired_parked_sessions_are_listed_on_request(store: RuntimeStore) -> None:
    held, orphan, released = (_running(store, sid) for sid in ("held", "orphan", "released"))
    for sid, lease in ((held, 3600), (orphan, 30), (released, 3600)):
        assert store.claim(sid, "w1", lease, now=T0)
        assert store.park(sid, _deferral(sid, 0))
    assert store.release(released, "w1")
    late = T0 + timedelta(minutes=5)  # the orphan's owner stopped renewing
    assert store.expired_sessions(now=late) == []
    # Released ones first (no lease at all), then the longest expired; a valid lease is never listed.
    assert store.expired_sessions(now=late, include_parked=True) == [released, orphan]
    assert store.expired_sessions(now=late, limit=1, include_parked=True) == [released]
    # Running ones come before every parked one: they have work to do.
    running = _running(store, "running")
    assert store.expired_sessions(now=late, include_parked=True) == [running, released, orphan]
    assert store.expired_sessions(now=late, limit=1, include_parked=True) == [running]

    assert store.owned_sessions("w1", now=late) == [held]
    assert store.owned_sessions("w1", now=late, status="parked") == [held]
    assert store.owned_sessions("w1", now=late, status=SessionStatus.RUNNING) == []


def test_park_is_fenced_by_the_lease(store: RuntimeStore) -> None:
    sid = _running(store)
    assert store.claim(sid, "w1", 60)
    first = _deferral(sid, 0)
    with pytest.raises(LeaseLostError, match="w2"):
        store.park(sid, first, worker_id="w2")
    assert _session(store, sid).status == SessionStatus.RUNNING and store.get_deferral(first.deferral_id) is None
    assert store.get_proposal(first.proposal.proposal_id) is None and store.decisions(sid) == []
    assert store.park(sid, first, worker_id="w1") is True
    assert store.park(sid, first, worker_id="w2") is False  # a redelivery is harmless whoever sends it

    # w1's lease expires and w2 takes the session over: w1, presumed dead, can no longer park it.
    assert store.answer(_answer(first)).result == AnswerStatus.ACCEPTED
    assert store.claim(sid, "w1", 30, now=T0)  # the lease ended long ago (T0 is in the past)
    assert store.claim(sid, "w2", 60)
    with pytest.raises(LeaseLostError, match="w1"):
        store.park(sid, _deferral(sid, 1), worker_id="w1")
    assert isinstance(LeaseLostError("x"), ApplyRefusedError)  # callers catching the older error still do
    assert _session(store, sid).pending_deferral_id is None
    assert store.park(sid, _deferral(sid, 1), worker_id="w2") is True
    store.finish(sid, "stopped", {})
    assert store.park(sid, _deferral(sid, 2), worker_id="w2") is False  # ended: nothing to fence


def test_concurrent_claims_have_one_winner(url: str) -> None:
    stores = [RuntimeStore(url), RuntimeStore(url)]
    try:
        sid = _running(stores[0])
        barrier = threading.Barrier(8)
        wins: list[str] = []

        def claim(i: int) -> None:
            barrier.wait()
            if stores[i % 2].claim(sid, f"w{i}", 30, now=T0):
                wins.append(f"w{i}")

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(wins) == 1
        row = stores[1].get_session(sid)
        assert row is not None and row.owner == wins[0]
    finally:
        for runtime_store in stores:
            runtime_store.close()


# ---- deferrals -----------------------------------------------------------------------------------------------


def test_park_then_answer_accepted_once(store: RuntimeStore) -> None:
    sid = _running(store)
    deferral = _deferral(sid, 0)
    assert store.park(sid, deferral) is True
    assert store.park(sid, deferral) is False  # a redelivery changes nothing and is not counted twice
    row = store.get_session(sid)
    assert row is not None and row.status == SessionStatus.PARKED
    assert (row.pending_proposal_id, row.pending_etag, row.pending_deferral_id) == (
        deferral.proposal.proposal_id,
        deferral.proposal.state_etag,
        deferral.deferral_id,
    )
    assert (row.actions_deferred, row.automated, row.step) == (1, False, deferral.proposal.step)
    assert store.pending_deferrals() == [deferral]
    assert store.get_proposal(deferral.proposal.proposal_id) == deferral.proposal  # park stored both
    assert store.decisions(sid) == [deferral.decision]
    assert store.record_proposal(deferral.proposal) is False and store.record_decision(deferral.decision) is False

    reply = _answer(deferral)
    result = store.answer(reply)
    assert result.result == AnswerStatus.ACCEPTED
    assert (result.deferral_id, result.session_id, result.deferral) == (deferral.deferral_id, sid, deferral)
    row = store.get_session(sid)
    assert row is not None and row.status == SessionStatus.RUNNING
    assert (row.pending_proposal_id, row.pending_etag, row.pending_deferral_id) == (None, None, None)
    stored = store.get_deferral(deferral.deferral_id)
    assert stored is not None and stored.status == DeferralStatus.ANSWERED
    assert stored.answer == reply and stored.operator_id == "op-1" and stored.answered_at is not None
    assert store.pending_deferrals() == []

    assert store.answer(reply).result == AnswerStatus.DUPLICATE  # a redelivered message
    assert store.answer(_answer(deferral)).result == AnswerStatus.DUPLICATE  # a double click, a moment later
    other = store.answer(_answer(deferral, Verdict.REJECT, operator="op-2"))
    assert other.result == AnswerStatus.STALE  # the first answer stands
    stored = store.get_deferral(deferral.deferral_id)
    assert stored is not None and stored.answer == reply


def test_answers_for_another_state_or_proposal_are_not_accepted(store: RuntimeStore) -> None:
    sid = _running(store)
    first, second = _deferral(sid, 0), _deferral(sid, 1)
    store.park(sid, first)

    wrong_state = _answer(first).model_copy(update={"state_etag": second.proposal.state_etag})
    assert store.answer(wrong_state).result == AnswerStatus.STALE
    assert _session(store, sid).status == SessionStatus.PARKED
    assert store.answer(_answer(second)).result == AnswerStatus.UNKNOWN  # no deferral for that proposal yet
    other_session = _answer(first).model_copy(update={"session_id": "s-other"})
    assert store.answer(other_session).result == AnswerStatus.UNKNOWN

    assert store.park(sid, second)  # the session moved on: the first deferral is superseded
    assert _session(store, sid).step == 1  # parked at its proposal's step
    assert _deferral_row(store, first.deferral_id).status == DeferralStatus.STALE
    assert store.answer(_answer(first)).result == AnswerStatus.STALE
    assert store.pending_deferrals() == [second]
    assert store.answer(_answer(second)).result == AnswerStatus.ACCEPTED
    assert _session(store, sid).actions_deferred == 2

    third = _deferral(sid, 2)
    store.park(sid, third)
    assert store.finish(sid, "stopped", {"by": "supervisor"})
    assert _deferral_row(store, third.deferral_id).status == DeferralStatus.CANCELLED
    assert store.answer(_answer(third)).result == AnswerStatus.STALE
    assert store.park(sid, _deferral(sid, 3)) is False  # an ended session cannot park
    assert store.pending_deferrals() == []


def test_park_rejects_a_reused_deferral_id(store: RuntimeStore) -> None:
    sid = _running(store)
    store.park(sid, _deferral(sid, 0))
    reused = _deferral(sid, 1).model_copy(update={"deferral_id": f"{sid}/f0"})
    with pytest.raises(ValueError, match=r"^deferral\.deferral_id:"):
        store.park(sid, reused)


def test_deferrals_start_unpublished_until_marked(store: RuntimeStore) -> None:
    sid = _running(store)
    deferral = _deferral(sid, 0)
    store.park(sid, deferral)
    assert _deferral_row(store, deferral.deferral_id).published is False
    assert store.mark_published(deferral.deferral_id) is True
    assert store.mark_published(deferral.deferral_id) is False  # marked once
    assert store.mark_published("no-such-deferral") is False
    assert [row.published for row in store.session_deferrals(sid)] == [True]
    store.answer(_answer(deferral))
    assert _deferral_row(store, deferral.deferral_id).published is True  # answering keeps the flag


def test_an_older_database_gets_the_published_column(url: str) -> None:
    with RuntimeStore(url) as first:
        sid = _running(first)
        deferral = _deferral(sid, 0)
        first.park(sid, deferral)
        first.mark_published(deferral.deferral_id)
        with first.engine.begin() as conn:  # as the tables were before the column existed
            conn.exec_driver_sql("ALTER TABLE deferrals DROP COLUMN published")
    with RuntimeStore(url) as reopened:
        row = _deferral_row(reopened, deferral.deferral_id)
        assert row.deferral == deferral and row.published is False  # unknown: a takeover publishes it again
        assert reopened.mark_published(deferral.deferral_id) is True


@pytest.mark.parametrize("same_content", [True, False], ids=["redelivered", "different-operators"])
def test_concurrent_answers_exactly_one_accepted(url: str, same_content: bool) -> None:
    stores = [RuntimeStore(url), RuntimeStore(url)]
    try:
        sid = _running(stores[0])
        deferral = _deferral(sid, 0)
        stores[0].park(sid, deferral)
        replies = [_answer(deferral, operator="op-1" if same_content else f"op-{i}") for i in range(8)]
        barrier = threading.Barrier(8)
        results: list[AnswerStatus] = []

        def answer(i: int) -> None:
            barrier.wait()
            results.append(stores[i % 2].answer(replies[i]).result)

        threads = [threading.Thread(target=answer, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        loser = AnswerStatus.DUPLICATE if same_content else AnswerStatus.STALE
        assert Counter(results) == {AnswerStatus.ACCEPTED: 1, loser: 7}
        row = stores[1].get_session(sid)
        assert row is not None and row.status == SessionStatus.RUNNING and row.pending_proposal_id is None
    finally:
        for runtime_store in stores:
            runtime_store.close()


def test_pending_deferrals_by_queue_oldest_first_and_stats(store: RuntimeStore) -> None:
    ages = {"a": ("billing", 10), "b": ("tier2", 20), "c": ("billing", 30), "d": ("billing", 5)}
    deferrals = {}
    for sid, (queue, age) in ages.items():
        _running(store, sid)
        deferrals[sid] = _deferral(sid, 0, queue=queue, created_at=T0 - timedelta(seconds=age))
        store.park(sid, deferrals[sid])

    assert store.pending_deferrals(["billing"]) == [deferrals["c"], deferrals["a"], deferrals["d"]]
    assert store.pending_deferrals(["tier2"]) == [deferrals["b"]]
    assert store.pending_deferrals() == [deferrals[s] for s in ("c", "b", "a", "d")]
    assert store.pending_deferrals(["billing", "tier2"], limit=2) == [deferrals["c"], deferrals["b"]]
    assert store.pending_deferrals([]) == [] and store.pending_deferrals(["nobody"]) == []
    assert store.deferral_stats(now=T0) == {"billing": QueueStats(3, 30.0), "tier2": QueueStats(1, 20.0)}

    store.answer(_answer(deferrals["c"]))
    store.finish("b", "handed_over", {})
    assert store.deferral_stats(now=T0 + timedelta(seconds=1)) == {"billing": (2, 11.0)}
    assert store.pending_deferrals(["billing"]) == [deferrals["a"], deferrals["d"]]


# ---- exactly-once side effects -------------------------------------------------------------------------------


def test_apply_once_never_applies_a_key_twice_across_threads(store: RuntimeStore) -> None:
    sid = _running(store)
    calls: list[int] = []
    barrier = threading.Barrier(8)
    outcomes: list[tuple[bool, str | None]] = []
    overlapped: list[bool] = []

    def effect(i: int) -> str:
        calls.append(i)
        # A slow BPM call: it lasts until the seven others have been turned away (the key is reserved).
        deadline = time.monotonic() + 30
        while len(outcomes) < 7 and time.monotonic() < deadline:
            time.sleep(0.005)
        overlapped.append(len(outcomes) == 7)
        return f"done by {i}"

    def run(i: int) -> None:
        barrier.wait()
        outcomes.append(store.apply_once("s1/3/click", sid, 3, ACTION, lambda: effect(i)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1 and overlapped == [True]
    assert sorted(outcomes, key=lambda o: o[0]) == [(False, None)] * 7 + [(True, f"done by {calls[0]}")]
    assert store.is_applied("s1/3/click") and store.unconfirmed_keys(sid) == []
    assert _session(store, sid).actions_applied == 1
    assert store.apply_once("s1/3/click", sid, 3, ACTION, lambda: effect(99)) == (False, None)
    assert len(calls) == 1


def test_apply_once_across_two_store_instances(url: str) -> None:
    stores = [RuntimeStore(url), RuntimeStore(url)]
    try:
        sid = _running(stores[0])
        keys = [f"{sid}/{n}/click" for n in range(15)]
        applied: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(6)

        def run(i: int) -> None:
            barrier.wait()
            for n, key in enumerate(keys):

                def effect(key: str = key) -> None:
                    with lock:
                        applied.append(key)

                stores[i % 2].apply_once(key, sid, n, ACTION, effect)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(applied) == sorted(keys)  # each key exactly once
        assert _session(stores[1], sid).actions_applied == len(keys)
    finally:
        for runtime_store in stores:
            runtime_store.close()


def test_a_failing_apply_leaves_the_key_retryable(store: RuntimeStore) -> None:
    sid = _running(store)

    def timeout() -> None:
        raise TimeoutError("the BPM did not answer")

    with pytest.raises(TimeoutError):
        store.apply_once("s1/0/transfer", sid, 0, TransferChat(queue="tier2"), timeout)
    assert not store.is_applied("s1/0/transfer") and store.unconfirmed_keys(sid) == []
    assert _session(store, sid).actions_applied == 0
    assert store.apply_once("s1/0/transfer", sid, 0, TransferChat(queue="tier2"), lambda: "ok") == (True, "ok")
    assert _session(store, sid).actions_applied == 1


def test_apply_once_refuses_ended_parked_or_foreign_sessions(store: RuntimeStore) -> None:
    sid = _running(store)
    assert store.claim(sid, "w1", 60)
    called: list[str] = []
    with pytest.raises(ApplyRefusedError, match="w2"):
        store.apply_once("k1", sid, 0, ACTION, lambda: called.append("k1"), worker_id="w2")  # fencing
    assert store.apply_once("k1", sid, 0, ACTION, lambda: called.append("k1"), worker_id="w1") == (True, None)

    store.park(sid, _deferral(sid, 1))
    with pytest.raises(ApplyRefusedError, match="parked"):
        store.apply_once("k2", sid, 1, ACTION, lambda: called.append("k2"))
    store.finish(sid, "stopped", {})
    with pytest.raises(ApplyRefusedError, match="stopped"):
        store.apply_once("k3", sid, 2, ACTION, lambda: called.append("k3"))
    assert store.apply_once("k1", sid, 0, ACTION, lambda: called.append("again")) == (False, None)  # a redelivery
    assert called == ["k1"]


def test_drop_reservation_removes_only_an_unconfirmed_key_and_is_fenced(store: RuntimeStore, url: str) -> None:
    sid = _running(store)
    assert store.claim(sid, "w1", 60)
    # A worker dies between reserving the key and confirming it (as in the test above).
    process = multiprocessing.get_context("spawn").Process(target=_crash_during_apply, args=(url, sid, "s1/4/xfer"))
    process.start()
    process.join(60)
    assert process.exitcode == 3 and [k.idempotency_key for k in store.unconfirmed_keys(sid)] == ["s1/4/xfer"]

    with pytest.raises(LeaseLostError, match="w2"):
        store.drop_reservation("s1/4/xfer", worker_id="w2")
    assert [k.idempotency_key for k in store.unconfirmed_keys(sid)] == ["s1/4/xfer"]
    # The BPM refused the re-sent action, so it never applied it: the reservation is dead.
    assert store.drop_reservation("s1/4/xfer", worker_id="w1") is True
    assert store.unconfirmed_keys(sid) == [] and not store.is_applied("s1/4/xfer")
    assert store.drop_reservation("s1/4/xfer") is False  # gone already
    # The step can be decided again: the same action under the same key applies, once.
    calls: list[str] = []
    effect = lambda: calls.append("x")  # noqa: E731
    assert store.apply_once("s1/4/xfer", sid, 4, TransferChat(queue="tier2"), effect, worker_id="w1")[0] is True
    assert store.drop_reservation("s1/4/xfer", worker_id="w1") is False  # a confirmed key is never dropped
    assert store.is_applied("s1/4/xfer") and calls == ["x"] and _session(store, sid).actions_applied == 1
    assert store.drop_reservation("never-reserved") is False


def test_sqlite_runs_wal_with_synchronous_normal(tmp_path: Path) -> None:
    with RuntimeStore(f"sqlite:///{tmp_path / 'runtime.db'}") as sqlite_store, sqlite_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL (FULL is 2)


def test_apply_once_stores_the_proposal_and_decision_with_the_reservation(store: RuntimeStore) -> None:
    sid = _running(store)
    assert store.claim(sid, "w1", 60)
    first, second = _deferral(sid, 0), _deferral(sid, 1)  # their proposals and decisions, as an executed step's
    with pytest.raises(LeaseLostError):
        store.apply_once("k0", sid, 0, ACTION, lambda: None, worker_id="w2", proposal=first.proposal)
    assert store.get_proposal(first.proposal.proposal_id) is None  # refused: nothing stored
    done = store.apply_once(
        "k0", sid, 0, ACTION, lambda: "ok", worker_id="w1", proposal=first.proposal, decision=first.decision
    )
    assert done == (True, "ok")
    assert store.get_proposal(first.proposal.proposal_id) == first.proposal
    assert store.decisions(sid) == [first.decision]
    # A key met again (a redelivery) still records a new decision: it was made, even if nothing is applied.
    again = store.apply_once("k0", sid, 0, ACTION, lambda: "x", proposal=second.proposal, decision=second.decision)
    assert again == (False, None) and store.decisions(sid) == [first.decision, second.decision]
    with pytest.raises(ValueError, match=r"^proposal:"):
        store.apply_once("k1", sid, 1, ACTION, lambda: None, proposal=first.decision)  # type: ignore[arg-type]


# Process bodies for the multi-process tests (spawned: they import this module).


def _crash_during_apply(url: str, session_id: str, key: str) -> None:
    store = RuntimeStore(url)
    store.apply_once(key, session_id, 4, TransferChat(queue="tier2"), lambda: os._exit(3))


def _apply_all(url: str, session_id: str, keys: list[str], log: str, name: str, barrier: BarrierType) -> None:
    store = RuntimeStore(url)
    barrier.wait(30)
    for n, key in enumerate(keys):

        def effect(key: str = key) -> None:
            with open(log, "a") as out:  # one small O_APPEND write per line: lines never interleave
                out.write(f"{name} {key}\n")

        store.apply_once(key, session_id, n, ACTION, effect)
    store.close()


def test_a_worker_dying_mid_apply_leaves_an_unconfirmed_key_to_resend(store: RuntimeStore, url: str) -> None:
    sid = _running(store)
    process = multiprocessing.get_context("spawn").Process(target=_crash_during_apply, args=(url, sid, "s1/4/xfer"))
    process.start()
    process.join(60)
    assert process.exitcode == 3  # died inside apply, between reservation and confirmation

    pending = store.unconfirmed_keys(sid)
    assert [(p.idempotency_key, p.step, p.action) for p in pending] == [("s1/4/xfer", 4, TransferChat(queue="tier2"))]
    assert store.apply_once("s1/4/xfer", sid, 4, TransferChat(queue="tier2"), lambda: "x") == (False, None)
    # The successor re-sends the effect with the same key (the BPM deduplicates it), then confirms it once.
    assert store.confirm("s1/4/xfer") is True
    assert store.confirm("s1/4/xfer") is False
    assert store.unconfirmed_keys(sid) == [] and store.is_applied("s1/4/xfer")
    assert _session(store, sid).actions_applied == 1
    assert store.confirm("never-reserved") is False


def test_apply_once_across_processes(store: RuntimeStore, url: str, tmp_path: Path) -> None:
    sid = _running(store)
    keys = [f"{sid}/{n}/click" for n in range(12)]
    log = tmp_path / "effects.log"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    processes = [
        context.Process(target=_apply_all, args=(url, sid, keys, str(log), f"p{i}", barrier)) for i in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    effects = Counter(line.split()[1] for line in log.read_text().splitlines())
    assert effects == dict.fromkeys(keys, 1)
    assert _session(store, sid).actions_applied == len(keys)


# ---- audit log -----------------------------------------------------------------------------------------------


def test_audit_log_newest_first(store: RuntimeStore) -> None:
    first = store.audit("supervisor:ann", "kill_switch", "", {"on": True})
    second = store.audit("operator:bob", "answer", "s1/p0", {"verdict": "accept", "queue": "billing"})
    third = store.audit("service", "stop", "s1", None)
    assert first < second < third
    entries = store.audit_log(limit=2)
    assert [(e.id, e.actor, e.action, e.target, e.details) for e in entries] == [
        (third, "service", "stop", "s1", {}),
        (second, "operator:bob", "answer", "s1/p0", {"verdict": "accept", "queue": "billing"}),
    ]
    assert entries[0].at.tzinfo is UTC
    assert [e.id for e in store.audit_log()] == [third, second, first]


def test_audit_outcomes_count_answered_audits_per_slice(store: RuntimeStore) -> None:
    """Audited steps (would-execute steps deferred at random) with their answers, per slice, from any worker:
    what the dashboard and the realised-error metric read. Unanswered and non-audit deferrals do not count."""
    outcomes = []
    for i, (audit, verdict) in enumerate([(True, Verdict.ACCEPT), (True, Verdict.REJECT), (False, Verdict.ACCEPT)]):
        sid = _running(store, f"a{i}")
        base = _deferral(sid, 0)
        deferral = base.model_copy(update={"decision": base.decision.model_copy(update={"audit": audit})})
        assert store.park(sid, deferral)
        assert store.answer(_answer(deferral, verdict)).result == AnswerStatus.ACCEPTED
        outcomes.append(deferral)
    pending_sid = _running(store, "a-pending")
    base = _deferral(pending_sid, 0)
    assert store.park(
        pending_sid, base.model_copy(update={"decision": base.decision.model_copy(update={"audit": True})})
    )
    assert store.audit_outcomes() == {"billing/click_control": (1, 2)}
    assert store.audit_outcomes(since=datetime.now(UTC) + timedelta(hours=1)) == {}


# ---- heartbeats, decision counts and the stage-event compare-and-set -------------------------------------------


def test_worker_heartbeats_are_replaced_in_place_and_tell_who_is_alive(store: RuntimeStore) -> None:
    beat = WorkerHeartbeat(
        worker_id="w1",
        started_at=T0,
        last_seen=T0 + timedelta(seconds=5),
        interval_s=5.0,
        critic_version="critic-1",
        stage_event_id=3,
        kill_switch=False,
        sessions=2,
        decisions={"execute": 4},
        decision_latency_ms={"count": 4, "p50": 12.5, "p99": 20.0, "max": 21.0},
    )
    store.heartbeat(beat)
    later = replace(beat, last_seen=T0 + timedelta(seconds=10), stage_event_id=7, decisions={"execute": 5, "defer": 1})
    store.heartbeat(later)
    store.heartbeat(replace(beat, worker_id="w2", critic_version=None, kill_switch=True))
    assert [b.worker_id for b in store.heartbeats()] == ["w1", "w2"]
    assert store.heartbeats()[0] == later
    assert later.alive(T0 + timedelta(seconds=24)) and not later.alive(T0 + timedelta(seconds=26))
    store.heartbeat(replace(later, stopped_at=T0 + timedelta(seconds=11)))
    assert not store.heartbeats()[0].alive(T0 + timedelta(seconds=12))  # closed cleanly
    assert [b.worker_id for b in store.heartbeats(since=T0 + timedelta(seconds=8))] == ["w1"]


def test_decision_counts_by_outcome_since(store: RuntimeStore) -> None:
    executed = _deferral("s1", 1).decision.model_copy(update={"decision_id": "x", "outcome": DecisionOutcome.EXECUTE})
    old = _deferral("s1", 2).decision.model_copy(update={"decided_at": T0 - timedelta(days=2)})
    for decision in (_deferral("s1", 0).decision, executed, old):
        store.record_decision(decision)
    assert store.decision_counts() == {"defer": 2, "execute": 1}
    assert store.decision_counts(since=T0 - timedelta(days=1)) == {"defer": 1, "execute": 1}


def test_a_stage_event_compare_and_set_refuses_a_stale_view_of_the_slice(store: RuntimeStore) -> None:
    slice_args = {"process_id": "billing", "action_type": "click_control"}
    first = store.append_stage_event_if_latest(
        0, "w1", "promotion", "system", "promoted", stage="autopilot", **slice_args
    )
    assert first is not None
    other = store.append_stage_event("w2", "override", "sam", "elsewhere", process_id="other", action_type="fill_field")
    # Another slice's event does not make a view of this one stale; an event on this slice does.
    assert store.append_stage_event_if_latest(first, "w1", "demotion", "system", "x", **slice_args) is not None
    assert store.append_stage_event_if_latest(first, "w2", "promotion", "system", "late", **slice_args) is None
    assert other > first
    assert [e.origin for e in store.stage_events_after(0)] == ["w1", "w2", "w1"]


# ---- an answer and its audit entry (issue 17, finding 3) -------------------------------------------------------


def _die_at_the_audit_write(store: RuntimeStore) -> None:
    """Make this process die (as kill -9 would: no cleanup, no rollback) the moment an audit row is written."""
    from sqlalchemy import event

    @event.listens_for(store.engine, "before_cursor_execute")
    def _die(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_LOG"):
            os._exit(9)


def _crash_at_the_audit_write(url: str, decision_json: str) -> None:
    """Answer with an audit entry and die writing it: the old protocol committed the answer before it wrote the
    audit entry."""
    store = RuntimeStore(url)
    _die_at_the_audit_write(store)
    decision = OperatorDecision.model_validate_json(decision_json)
    store.answer(decision, audit=AuditNote("op-1", "answer:accept", "s1/f0", {"session_id": "s1"}))


def _crash_at_the_review_audit_write(url: str, review_json: str) -> None:
    """Record a QA review with its audit entry and die writing it: the old protocol committed the review first."""
    store = RuntimeStore(url)
    qa = QAStore(store)
    _die_at_the_audit_write(store)
    review = QAAnswer.model_validate_json(review_json)
    qa.answer(review, audit=AuditNote("op-1", "qa:accept", review.qa_id, {"session_id": review.session_id}))


def test_an_answer_and_its_audit_entry_commit_together(store: RuntimeStore, url: str) -> None:
    sid = _running(store)
    deferral = _deferral(sid, 0)
    assert store.park(sid, deferral)
    reply = _answer(deferral)
    process = multiprocessing.get_context("spawn").Process(
        target=_crash_at_the_audit_write, args=(url, reply.model_dump_json())
    )
    process.start()
    process.join(60)
    assert process.exitcode == 9  # died writing the audit entry, inside the answer's transaction
    # Nothing of it stands: the deferral is still pending and the session still parked, with no audit entry.
    assert _deferral_row(store, deferral.deferral_id).status == DeferralStatus.PENDING
    assert _session(store, sid).status == SessionStatus.PARKED
    assert store.answer_audit(deferral.deferral_id) is None

    note = AuditNote("op-1", "answer:accept", deferral.deferral_id, {"session_id": sid})
    accepted = store.answer(reply, audit=note)
    assert accepted.result == AnswerStatus.ACCEPTED and accepted.audit_id is not None
    entry = store.answer_audit(deferral.deferral_id)
    assert entry is not None and (entry.id, entry.actor, entry.action) == (accepted.audit_id, "op-1", "answer:accept")
    # The client's retry gets "duplicate" and finds the same entry; no second entry is written.
    duplicate = store.answer(reply, audit=note)
    assert duplicate.result == AnswerStatus.DUPLICATE and duplicate.audit_id == accepted.audit_id
    assert [e.target for e in store.audit_log()].count(deferral.deferral_id) == 1


def test_a_qa_review_and_its_audit_entry_commit_together(store: RuntimeStore, url: str) -> None:
    qa = QAStore(store)
    executed = _deferral("s1", 0)
    item = QAItem(
        qa_id="qa-s1/p0",
        session_id="s1",
        queue="billing",
        state=executed.state,
        proposal=executed.proposal,
        decision=executed.decision.model_copy(update={"outcome": DecisionOutcome.EXECUTE, "audit": True}),
    )
    assert qa.add(item)
    review = QAAnswer(
        qa_id=item.qa_id,
        proposal_id=item.proposal.proposal_id,
        session_id="s1",
        verdict=Verdict.ACCEPT,
        operator_id="op-1",
    )
    process = multiprocessing.get_context("spawn").Process(
        target=_crash_at_the_review_audit_write, args=(url, review.model_dump_json())
    )
    process.start()
    process.join(60)
    assert process.exitcode == 9  # died writing the audit entry, inside the review's transaction
    row = qa.get(item.qa_id)
    assert row is not None and (row.status, row.answer) == (QAStatus.PENDING, None)
    assert qa.review_audit(item.qa_id) is None

    note = AuditNote("op-1", "qa:accept", item.qa_id, {"session_id": "s1"})
    for wrong in (replace(note, action="answer:accept"), replace(note, target="qa-other")):
        with pytest.raises(ValueError, match="audit"):
            qa.answer(review, audit=wrong)
    accepted = qa.answer(review, audit=note)
    assert accepted.result == AnswerStatus.ACCEPTED and accepted.audit_id is not None
    entry = qa.review_audit(item.qa_id)
    assert entry is not None and (entry.id, entry.action, entry.target) == (accepted.audit_id, "qa:accept", item.qa_id)
    assert store.answer_audit(item.qa_id) is None  # a review's entry is not a deferral answer's
    duplicate = qa.answer(review.model_copy(update={"note": "again"}), audit=note)
    assert duplicate.result == AnswerStatus.DUPLICATE and duplicate.audit_id == accepted.audit_id
    assert [e.target for e in store.audit_log()].count(item.qa_id) == 1


def test_recorded_answer_reads_what_the_store_holds(store: RuntimeStore) -> None:
    sid = _running(store)
    deferral = _deferral(sid, 0)
    assert store.park(sid, deferral)
    reply = _answer(deferral)
    assert store.recorded_answer(reply).result == AnswerStatus.UNKNOWN  # announced, never recorded
    assert _deferral_row(store, deferral.deferral_id).status == DeferralStatus.PENDING  # and nothing changed
    assert store.answer(reply).result == AnswerStatus.ACCEPTED
    assert store.recorded_answer(reply).result == AnswerStatus.ACCEPTED
    assert store.recorded_answer(_answer(deferral, Verdict.REJECT)).result == AnswerStatus.STALE
    other = _answer(deferral).model_copy(update={"proposal_id": "nope"})
    assert store.recorded_answer(other).result == AnswerStatus.UNKNOWN


# ---- issued copilot proposals (issue 17, finding 4) ----------------------------------------------------------


def test_feedback_is_claimed_once_for_an_issued_proposal_by_its_caller(store: RuntimeStore) -> None:
    proposal = _deferral("s9", 0).proposal
    assert store.claim_issued(proposal, "olga", "d1").status == IssuedStatus.UNKNOWN  # never issued
    store.record_issued(proposal, "olga", now=T0)
    store.record_issued(proposal, "olga", now=T0)  # a repeat changes nothing
    assert store.claim_issued(proposal, "oscar", "d1").status == IssuedStatus.OTHER_CALLER
    changed = proposal.model_copy(update={"action": TransferChat(queue="tier2")})
    assert store.claim_issued(changed, "olga", "d1").status == IssuedStatus.DIFFERENT
    assert store.claim_issued(proposal, "olga", "d1", issued_after=T0 + timedelta(hours=1)).status == (
        IssuedStatus.UNKNOWN  # expired
    )
    claim = store.claim_issued(proposal, "olga", "d1")
    assert claim.status == IssuedStatus.CLAIMED and claim.proposal == proposal
    assert store.claim_issued(proposal, "olga", "d1").status == IssuedStatus.REPEATED
    assert store.claim_issued(proposal, "olga", "d2").status == IssuedStatus.USED
    assert store.prune_issued(T0 + timedelta(seconds=1)) == 1
    assert store.claim_issued(proposal, "olga", "d1").status == IssuedStatus.UNKNOWN
