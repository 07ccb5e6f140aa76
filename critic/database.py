"""One way to open a SQL database from a URL: the feedback store (``critic.store``) and the runtime's store
(``service.runtime.store``) both build their engines here, so a URL means the same thing to both.

What it settles: SQLite (a file, its folder created; or, where the caller allows it, in memory) and PostgreSQL
through psycopg 3 (a bare ``postgresql://`` would ask SQLAlchemy for psycopg2, which is not installed); any other
backend, a malformed URL or a missing driver is a ValueError whose message never shows the password. It lives in
``critic`` because both stores need it and critic never imports service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

URL_HINT = "expected e.g. sqlite:///path/to/file.db or postgresql+psycopg://user:password@host/dbname"
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another one before "database is locked"


def open_engine(url: str, *, allow_memory: bool = False) -> tuple[Engine, str]:
    """The engine of ``url``, and the URL as it may be shown (password hidden).

    ``allow_memory``: accept an in-memory SQLite database (each pooled connection of a file-less SQLite has its
    own empty database, so a store shared between threads or processes needs a file)."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"url: must be a non-empty database URL; {URL_HINT}")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"url: not a database URL; {URL_HINT}") from None  # the value may hold a password
    backend = parsed.get_backend_name()
    shown = parsed.render_as_string(hide_password=True)
    options: dict[str, Any]
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        options = {"pool_pre_ping": True}
    elif backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
            if not allow_memory:
                raise ValueError(f"url: {shown!r} is an in-memory SQLite database; the store needs a file")
        elif not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        options = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
    else:
        raise ValueError(f"url: unsupported database {backend!r} in {shown!r}; {URL_HINT}")
    try:
        return create_engine(parsed, **options), shown
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        raise ValueError(f"url: cannot open {shown!r}: {error}") from None
