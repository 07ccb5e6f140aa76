"""PlatformJournal: the sandbox platform's cases, kept beside the store so a served sandbox survives a restart.

The platform is deterministic: a case is fixed by (platform seed, case index, process) and every later state by
the actions applied to it in order (a customer's replies come from the case's own seeded generator, the CRM rows
from the cases opened before). So the journal stores operations, not state: each ``open_case`` and each applied
action (with its idempotency key) in the order they happened, in SQLite (``synchronous=NORMAL`` in WAL mode:
committed before ``apply`` returns, so a crash of the process never loses an action the runtime was told of).
``SandboxPlatform.attach_journal`` replays it into a fresh platform of the same seed, then records what follows.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from schemas.actions import Action, parse_action

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,              -- open | act | forget
    case_id TEXT NOT NULL,
    process_id TEXT,               -- open: as requested (NULL: drawn by the platform)
    case_index INTEGER,
    action TEXT,
    idempotency_key TEXT
);
"""


@dataclass(frozen=True, slots=True)
class Entry:
    op: str
    case_id: str
    process_id: str | None = None
    case_index: int | None = None
    action: Action | None = None
    idempotency_key: str | None = None


class PlatformJournal:
    """One SQLite file. ``seed`` is checked against the file's: a journal replays only into its own sandbox."""

    def __init__(self, path: str | Path, seed: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'seed'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('seed', ?)", (str(seed),))
        elif int(row[0]) != seed:
            raise ValueError(f"seed: {self.path} holds the cases of a sandbox with seed {row[0]}, not {seed}")

    def entries(self) -> Iterator[Entry]:
        rows = self._db.execute(
            "SELECT op, case_id, process_id, case_index, action, idempotency_key FROM journal ORDER BY seq"
        ).fetchall()
        for op, case_id, process_id, case_index, action, key in rows:
            yield Entry(op, case_id, process_id, case_index, None if action is None else parse_action(action), key)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM journal").fetchone()[0])

    def _append(self, entry: Entry) -> None:
        action = None if entry.action is None else entry.action.model_dump_json()
        with self._lock:
            self._db.execute(
                "INSERT INTO journal (op, case_id, process_id, case_index, action, idempotency_key) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (entry.op, entry.case_id, entry.process_id, entry.case_index, action, entry.idempotency_key),
            )

    def opened(self, case_id: str, process_id: str | None, case_index: int) -> None:
        """``process_id`` as the call gave it (None: the platform drew it from the case's seed)."""
        self._append(Entry("open", case_id, process_id, case_index))

    def acted(self, case_id: str, action: Action, idempotency_key: str | None) -> None:
        self._append(Entry("act", case_id, action=action, idempotency_key=idempotency_key))

    def forgot(self, case_id: str) -> None:
        self._append(Entry("forget", case_id))

    def close(self) -> None:
        with self._lock:
            self._db.close()
