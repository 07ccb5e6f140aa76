"""The feedback table: idempotent writes, time-window reads, a SQLite file shared by a writer and a reader."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from critic.errors import FeedbackError
from critic.store import FeedbackStore
from schemas import FeedbackRecord

START = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture
def dated(feedback_records: list[FeedbackRecord]) -> list[FeedbackRecord]:
    """20 records, one an hour from START."""
    return [
        r.model_copy(update={"created_at": START + timedelta(hours=i)}) for i, r in enumerate(feedback_records[:20])
    ]


def test_add_is_idempotent_on_record_id(dated: list[FeedbackRecord]) -> None:
    with FeedbackStore("sqlite://") as store:
        assert store.add(dated[:12]) == 12
        # A redelivery (overlapping batch, a record repeated inside the batch) adds only what is new.
        assert store.add([*dated[8:], dated[15]]) == 8
        assert store.count() == 20
        assert store.add(dated) == 0
        assert store.add([]) == 0
        assert store.count() == 20
        assert store.read() == dated
        with pytest.raises(ValueError, match=r"records\[1\]"):
            store.add([dated[0], {"record_id": "x"}])  # type: ignore[list-item]


def test_read_window_is_half_open_and_time_ordered(dated: list[FeedbackRecord]) -> None:
    with FeedbackStore("sqlite://") as store:
        store.add(dated[::-1])
        window = store.read(since=START + timedelta(hours=5), until=START + timedelta(hours=9))
        assert [r.record_id for r in window] == [r.record_id for r in dated[5:9]]
        # The same instant in another time zone, and a naive time (taken as UTC), select the same rows.
        plus_two = timezone(timedelta(hours=2))
        assert store.read(since=(START + timedelta(hours=17)).astimezone(plus_two)) == dated[17:]
        assert store.read(until=(START + timedelta(hours=3)).replace(tzinfo=None)) == dated[:3]
        assert store.read(since=START + timedelta(days=2)) == []


def test_sqlite_file_is_shared_between_writer_and_reader(tmp_path: Path, dated: list[FeedbackRecord]) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'feedback.db'}"  # the directory is created
    writer = FeedbackStore(url)
    writer.add(dated[:10])
    writer.close()
    with FeedbackStore(url) as reader:  # the table exists: it is reused, not recreated
        assert reader.count() == 10
        reader.add(dated[5:])
        assert [r.record_id for r in reader.read()] == [r.record_id for r in dated]
        with reader.engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT process_id, action_type, accepted, source, operator_id FROM feedback WHERE record_id = :i"
                ),
                {"i": dated[0].record_id},
            ).one()
    first = dated[0]
    assert tuple(row) == (
        first.slice.process_id,
        first.slice.action_type.value,
        first.accepted,
        first.source.value,
        first.operator_id,
    )


def test_invalid_payload_names_the_record(tmp_path: Path, dated: list[FeedbackRecord]) -> None:
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    with FeedbackStore(url) as store:
        store.add(dated[:3])
        broken = json.loads(dated[1].model_dump_json())
        broken["operator_id"] = ""
        with store.engine.begin() as conn:
            conn.execute(
                text("UPDATE feedback SET payload = :p WHERE record_id = :i"),
                {"p": json.dumps(broken), "i": dated[1].record_id},
            )
        with pytest.raises(FeedbackError, match=rf"record '{dated[1].record_id}': operator_id"):
            store.read()
        assert store.read(until=dated[1].created_at) == dated[:1]


def test_bad_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="url"):
        FeedbackStore("not a url")
