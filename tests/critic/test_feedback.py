"""Copilot feedback collection (and the lockstep batched copilot runner it uses), JSONL files, windows, splits
and sources."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from critic.base import critic_label
from critic.errors import FeedbackError
from critic.feedback import (
    CopilotFeedback,
    load_feedback_source,
    read_feedback,
    read_truth,
    time_split,
    time_window,
    truth_path,
    write_feedback,
)
from critic.store import FeedbackStore
from policy.policy import LMPolicy
from sandbox.copilot import bayes_policy, run_copilot, run_copilot_batched
from sandbox.feedback_collection import collect_copilot_feedback
from sandbox.simulate import StepModel
from schemas import Action, FeedbackRecord, Proposal, UIState, Verdict
from schemas.decision import RejectReason
from schemas.feedback import FeedbackSource

# --- the lockstep batched runner ---------------------------------------------------------------------------


def _same(action: Action) -> Action:
    return action


@dataclass(frozen=True)
class Replayed:
    """A proposal type of the test's own: the batched runner is generic in what a policy proposes."""

    action: Action


def test_batched_runner_reproduces_the_sequential_copilot_per_case() -> None:
    # A deterministic policy in both runners: the Bayes policy as run_copilot sees it, and the same decisions
    # replayed by state etag (a content hash) for the batched runner. Any difference in the cases, the draws or
    # their order makes a state miss (-> None, no review) or a verdict differ.
    decided: dict[str, Action] = {}

    def recording(state: UIState, model: StepModel) -> Action:
        decided[state.etag] = bayes_policy(state, model)
        return decided[state.etag]

    sequential = run_copilot(25, seed=9, policy=recording, start_index=3)
    calls: list[int] = []

    def replay(states: Sequence[UIState]) -> list[Replayed | None]:
        calls.append(len(states))
        return [Replayed(decided[s.etag]) if s.etag in decided else None for s in states]

    batched = list(run_copilot_batched(25, 9, replay, action_of=lambda r: r.action, start_index=3, concurrency=6))

    def view(state: UIState, verdict: Verdict, *rest: object) -> tuple[object, ...]:
        return (state.etag, verdict, *rest)

    by_case: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    for s in sequential:
        by_case[s.state.case_id].append(view(s.state, s.verdict, s.reason, s.executed, s.acceptable, s.operator_id))
    batched_by_case: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    for b in batched:
        batched_by_case[b.state.case_id].append(
            view(b.state, b.verdict, b.reason, b.executed, b.acceptable, b.operator_id)
        )
        assert b.proposal.action == b.proposed
        # Nothing of the operator's own on an accept or an environment rejection (the screen changed, or the
        # accepted action failed: then ``executed`` is the failed try).
        nothing_own = b.verdict == Verdict.ACCEPT or b.reason == RejectReason.ENVIRONMENT
        assert b.own_action == (None if nothing_own else b.executed)
        assert b.state.case_id.endswith(f"-{b.case_index:06d}")
    assert len(by_case) == 25
    assert batched_by_case == by_case
    assert {s.verdict for s in sequential} >= {Verdict.ACCEPT, Verdict.CORRECT}
    assert max(calls) == 6 and sum(calls) == len(sequential)  # lockstep: many states per call, none wasted


def test_batched_runner_lets_the_operator_act_where_the_policy_has_nothing(
    tiny_policy: tuple[LMPolicy, Path],
) -> None:
    policy, _ = tiny_policy
    seen: list[UIState] = []

    def odd_steps_empty(states: Sequence[UIState]) -> list[Proposal | None]:
        seen.extend(states)
        return [p if s.step % 2 == 0 else None for s, p in zip(states, policy.propose_batch(states), strict=True)]

    steps = list(run_copilot_batched(6, 4, odd_steps_empty, action_of=lambda p: p.action, concurrency=4))
    assert steps and all(s.state.step % 2 == 0 for s in steps)
    assert [s.state.etag for s in steps] == [s.etag for s in seen if s.step % 2 == 0]
    # Every turn, answered or not, moved its case on by exactly one action: after an unanswered (odd) step the
    # operator did their own action and the case went on.
    steps_by_case: dict[str, list[int]] = defaultdict(list)
    for state in seen:
        steps_by_case[state.case_id].append(state.step)
    assert len(steps_by_case) == 6
    assert all(v == list(range(len(v))) for v in steps_by_case.values())
    assert any(len(v) > 2 for v in steps_by_case.values())


def test_batched_runner_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        run_copilot_batched(1, 0, lambda s: [None] * len(s), action_of=_same, concurrency=0)
    with pytest.raises(ValueError, match="sessions"):
        run_copilot_batched(-1, 0, lambda s: [None] * len(s), action_of=_same)
    with pytest.raises(ValueError, match="propose"):
        next(run_copilot_batched(2, 0, lambda s: [], action_of=_same))


# --- collection ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collected(tiny_policy: tuple[LMPolicy, Path]) -> CopilotFeedback:
    return collect_copilot_feedback(tiny_policy[0], sessions=8, seed=21, concurrency=8, progress=False)


def test_collected_records_keep_labels_apart_from_corrections(collected: CopilotFeedback) -> None:
    records, truth = collected.records, collected.truth
    assert len(records) > 8 and len(truth) == len(records)
    for r in records:
        FeedbackRecord.model_validate_json(r.model_dump_json())  # a valid record, also after a round trip
        assert r.source == FeedbackSource.COPILOT
        assert r.proposal.state_etag == r.state.etag
        assert r.slice.process_id == r.state.process_id == r.proposal.process_id
        assert r.slice.action_type == r.proposal.action.type
        if r.accepted:
            assert r.operator_action is None and r.reason is None
        elif r.reason == RejectReason.ENVIRONMENT:  # the screen changed under the proposal: nothing was done
            assert r.operator_action is None
        elif r.reason == RejectReason.OTHER:  # the operator took over for reasons of their own, maybe the same way
            assert r.operator_action is not None
        else:  # a correction: the operator did something else
            assert r.reason is not None
            assert r.operator_action is not None and r.operator_action != r.proposal.action, r.reason
    assert {r.accepted for r in records} == {True, False}
    assert len({r.record_id for r in records}) == len(records)
    # Time order is case order, then step order.
    ordered = sorted(records, key=lambda r: r.created_at)
    keys = [(r.state.case_id, r.state.step) for r in ordered]
    assert keys == sorted(keys)


def test_collection_is_deterministic(tiny_policy: tuple[LMPolicy, Path], collected: CopilotFeedback) -> None:
    # Same concurrency: the LM scores the same batches, so even its float features repeat exactly (a different
    # batch composition changes packing, hence the last bits of the scores).
    again = collect_copilot_feedback(tiny_policy[0], sessions=8, seed=21, concurrency=8, progress=False)
    assert [r.model_dump_json() for r in again.records] == [r.model_dump_json() for r in collected.records]
    other = collect_copilot_feedback(tiny_policy[0], sessions=2, seed=22, progress=False)
    assert not {r.record_id for r in other.records} & {r.record_id for r in collected.records}


def test_summary_counts_the_records(collected: CopilotFeedback) -> None:
    summary = collected.summary()
    records = collected.records
    assert summary["rows"] == len(records)
    assert summary["acceptance_rate"] == round(sum(r.accepted for r in records) / len(records), 4)
    assert summary["label_rate"] == round(sum(critic_label(r) for r in records) / len(records), 4)
    assert summary["label_rate"] >= summary["acceptance_rate"]
    assert summary["corrections"] == sum(not r.accepted for r in records if r.operator_action is not None)
    assert sum(v["rows"] for v in summary["per_action_type"].values()) == len(records)
    assert CopilotFeedback().summary()["acceptance_rate"] is None


# --- JSONL files ---------------------------------------------------------------------------------------------


def test_jsonl_round_trip_with_truth_sidecar(tmp_path: Path, collected: CopilotFeedback) -> None:
    path = write_feedback(collected.records, tmp_path / "fb.jsonl", truth=collected.truth)
    assert read_feedback(path) == collected.records
    assert read_truth(path) == collected.truth
    lines = path.read_text().splitlines()
    assert len(lines) == len(collected.records)
    assert "truth" not in json.loads(lines[0]) and "acceptable" not in json.loads(lines[0])
    # Rewritten without truth, the stale sidecar goes, so it can never be paired with other rows.
    write_feedback(collected.records[:3], path)
    assert read_truth(path) is None and not truth_path(path).exists()
    with pytest.raises(ValueError, match="truth"):
        write_feedback(collected.records[:3], path, truth=[True])
    assert len(read_feedback(path)) == 3


def test_bad_line_names_file_line_and_field(tmp_path: Path, feedback_records: list[FeedbackRecord]) -> None:
    good = [r.model_dump_json() for r in feedback_records[:3]]
    broken = json.loads(good[1])
    broken["accepted"] = "perhaps"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good[0], json.dumps(broken), good[2]]) + "\n")
    with pytest.raises(FeedbackError, match=r"bad\.jsonl:2: accepted") as info:
        read_feedback(path)
    assert isinstance(info.value, ValueError)
    nested = json.loads(good[0])
    nested["proposal"]["features"]["probability"] = 3.0
    path.write_text(good[0] + "\n\n" + json.dumps(nested) + "\n")
    with pytest.raises(FeedbackError, match=r":3: proposal\.features\.probability"):
        read_feedback(path)
    path.write_text(good[0] + "\n{not json\n")
    with pytest.raises(FeedbackError, match=r"bad\.jsonl:2:"):
        read_feedback(path)


def test_empty_file_has_no_feedback_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(FeedbackError, match="no feedback rows"):
        read_feedback(path)


def test_failed_write_leaves_no_partial_file(tmp_path: Path, feedback_records: list[FeedbackRecord]) -> None:
    def failing() -> Iterator[FeedbackRecord]:
        yield from feedback_records[:5]
        raise RuntimeError("producer died")

    path = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="producer died"):
        write_feedback(failing(), path)
    assert list(tmp_path.iterdir()) == []
    write_feedback(feedback_records[:2], path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"records\[3\]"):
        write_feedback([*feedback_records[:3], "not a record"], path)  # type: ignore[list-item]
    assert path.read_bytes() == before  # the previous file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


# --- windows and splits --------------------------------------------------------------------------------------


def _dated(records: list[FeedbackRecord], start: datetime, step: timedelta) -> list[FeedbackRecord]:
    return [r.model_copy(update={"created_at": start + i * step}) for i, r in enumerate(records)]


def test_time_split_is_ordered_by_time_then_id(feedback_records: list[FeedbackRecord]) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    dated = _dated(feedback_records[:50], start, timedelta(hours=1))
    dated[10] = dated[10].model_copy(update={"created_at": dated[11].created_at})  # a tie
    shuffled = dated[::-1]
    train, calib, test = time_split(shuffled)
    assert (len(train), len(calib), len(test)) == (30, 10, 10)
    joined = train + calib + test
    assert [(r.created_at, r.record_id) for r in joined] == sorted((r.created_at, r.record_id) for r in dated)
    assert max(r.created_at for r in train) <= min(r.created_at for r in calib)
    assert max(r.created_at for r in calib) <= min(r.created_at for r in test)
    assert [len(p) for p in time_split(dated, (0.5, 0.5))] == [25, 25]
    with pytest.raises(ValueError, match="fractions"):
        time_split(dated, (0.5, 0.4))


def test_time_window_keeps_recent_records(feedback_records: list[FeedbackRecord]) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    dated = _dated(feedback_records[:40], start, timedelta(days=1))
    last = dated[-1].created_at
    assert [r.created_at for r in time_window(dated, 7)] == [last - timedelta(days=d) for d in range(6, -1, -1)]
    assert len(time_window(dated, None)) == 40
    as_of = start + timedelta(days=9, hours=12)  # a naive "now" is UTC
    kept = time_window(dated, 2, now=as_of.replace(tzinfo=None))
    assert [r.created_at for r in kept] == [start + timedelta(days=8), start + timedelta(days=9)]
    assert time_window([], 3) == []
    with pytest.raises(ValueError, match="days"):
        time_window(dated, 0)


# --- sources -------------------------------------------------------------------------------------------------


def test_load_feedback_source_of_each_kind(tmp_path: Path, feedback_records: list[FeedbackRecord]) -> None:
    records = _dated(feedback_records[:12], datetime(2026, 2, 1, tzinfo=UTC), timedelta(minutes=5))
    expected = [r.record_id for r in records]
    file = write_feedback(records[::-1], tmp_path / "one.jsonl")
    assert [r.record_id for r in load_feedback_source(str(file))] == expected  # time order, not file order
    folder = tmp_path / "dir"
    write_feedback(records[:8], folder / "a.jsonl")
    write_feedback(records[6:], folder / "b.jsonl")  # two records delivered twice
    (folder / "notes.txt").write_text("not feedback")
    assert [r.record_id for r in load_feedback_source(str(folder))] == expected
    url = f"sqlite:///{tmp_path / 'db' / 'feedback.db'}"
    with FeedbackStore(url) as store:
        store.add(records)
    assert load_feedback_source(url) == records
    with pytest.raises(FeedbackError, match="source"):
        load_feedback_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "void").mkdir()
    with pytest.raises(FeedbackError, match=r"no \.jsonl"):
        load_feedback_source(str(tmp_path / "void"))
    with pytest.raises(FeedbackError, match="no feedback rows"):
        load_feedback_source(f"sqlite:///{tmp_path / 'empty.db'}")
