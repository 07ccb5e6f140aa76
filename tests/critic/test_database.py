"""open_engine: one meaning of a database URL for the feedback store and the runtime's store."""

from __future__ import annotations

from pathlib import Path

import pytest

from critic.database import open_engine
from critic.store import FeedbackStore


def test_a_bare_postgresql_url_uses_psycopg_3_and_hides_the_password() -> None:
    engine, shown = open_engine("postgresql://autopilot:hunter2-secret@db.example:5432/autopilot")
    try:
        assert engine.url.drivername == "postgresql+psycopg"  # psycopg2, SQLAlchemy's default, is not installed
        assert "secret" not in shown and "db.example" in shown
    finally:
        engine.dispose()


def test_sqlite_file_gets_its_folder(tmp_path: Path) -> None:
    engine, shown = open_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.db'}")
    engine.dispose()
    assert (tmp_path / "a" / "b").is_dir() and shown.endswith("x.db")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_only_where_allowed(url: str) -> None:
    with pytest.raises(ValueError, match=r"^url: .*in-memory"):
        open_engine(url)
    engine, _ = open_engine(url, allow_memory=True)
    engine.dispose()


@pytest.mark.parametrize(
    "bad", ["", "not a url", "oracle://scott:tiger-secret@db.example/orcl", "nosuchdb+x://u:hunter2-secret@h/db"]
)
def test_bad_urls_are_value_errors_that_never_echo_a_password(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^url:") as caught:
        open_engine(bad)
    assert "secret" not in str(caught.value)
    with pytest.raises(ValueError, match=r"^url:"):
        FeedbackStore(bad)  # the feedback store reads URLs the same way


def test_the_feedback_store_shows_its_url_without_the_password(tmp_path: Path) -> None:
    with FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}") as store:
        assert store.url.endswith("feedback.db") and store.engine.url.drivername == "sqlite"
