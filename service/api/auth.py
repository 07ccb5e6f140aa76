"""Bearer tokens with roles: operator, supervisor, service.

Tokens are random (``ap_`` + 32 url-safe bytes), so a plain SHA-256 of the token is what is stored (a slow
password hash buys nothing against a 256-bit secret and would cost milliseconds per request). The file holds
names, roles, queues and hashes only; a token is shown once, when it is issued.

The file is re-read when its modification time changes (checked at most once a second), so issuing, rotating or
revoking a token needs no restart: ``autopilot tokens issue --name alice`` again replaces alice's hash (rotation),
``autopilot tokens revoke`` removes it. A file that cannot be parsed keeps the last good set (and logs why), so a
half-edited file never locks everyone out.

Rights:
- operator: copilot (suggest, feedback), the inbox of their own queues, reading sessions;
- supervisor: everything an operator may, every queue, and the supervisor routes (stages, kill switch);
- service: copilot and sessions (an integration starting background sessions), no inbox, no supervisor routes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.files import atomic_write_text

log = logging.getLogger(__name__)

TOKEN_PREFIX = "ap_"


class Role(StrEnum):
    OPERATOR = "operator"
    SUPERVISOR = "supervisor"
    SERVICE = "service"


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role
    queues: list[str] = Field(default_factory=list, description="Operator queues (empty for other roles)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    expires_at: datetime | None = Field(default=None, description="None: valid until revoked or rotated")


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenEntry] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name, role and queues."""

    name: str
    role: Role
    queues: tuple[str, ...]
    expires_at: datetime | None = None

    def may_answer(self, queue: str) -> bool:
        return self.role == Role.SUPERVISOR or (self.role == Role.OPERATOR and queue in self.queues)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenStore:
    """The token file, re-read when it changes. ``authenticate`` compares hashes in constant time."""

    def __init__(self, path: Path, check_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._entries: list[TokenEntry] = []
        self._version: tuple[int, int, int] | None = None  # (mtime_ns, inode, size): a replaced file is a new inode
        self._checked = 0.0
        self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.check_interval_s:
            return
        self._checked = now
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._entries:
                log.warning("token file %s disappeared: no token is valid now", self.path)
            self._entries, self._version = [], None
            return
        version = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
        if version == self._version:
            return
        try:
            parsed = TokenFile.model_validate_json(self.path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            log.error("token file %s is invalid, keeping the previous tokens: %s", self.path, exc)
            return
        self._entries, self._version = list(parsed.tokens), version
        log.info("token file %s loaded: %d tokens", self.path, len(self._entries))

    def authenticate(self, token: str) -> Principal | None:
        with self._lock:
            self._reload()
            entries = list(self._entries)
        digest = hash_token(token)
        found: TokenEntry | None = None
        for entry in entries:  # no early exit: the time taken does not depend on which entry matched
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        if found is None or (found.expires_at is not None and found.expires_at <= datetime.now(UTC)):
            return None
        return Principal(found.name, found.role, tuple(found.queues), found.expires_at)

    def names(self) -> list[str]:
        with self._lock:
            self._reload(force=True)
            return [entry.name for entry in self._entries]


def _read_file(path: Path) -> TokenFile:
    if not path.exists():
        return TokenFile()
    try:
        return TokenFile.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ValueError(f"{path}: not a token file ({exc.errors()[0]['msg']})") from exc


def _write_file(path: Path, content: TokenFile) -> None:
    """Atomic replace with owner-only permissions (hashes are not secrets, but there is no reason to share)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, content.model_dump_json(indent=2) + "\n", mode=0o600)


def issue_token(
    path: Path,
    name: str,
    role: Role | str,
    queues: Sequence[str] = (),
    token: str | None = None,
    ttl_h: float | None = None,
) -> str:
    """Add (or rotate: replace) the token named ``name``; return the token, which is stored only as a hash.
    ``ttl_h``: it expires that many hours from now (open streams of it close within seconds of that)."""
    role = Role(role)
    if role == Role.OPERATOR and not queues:
        raise ValueError("queues: an operator needs at least one queue")
    if role != Role.OPERATOR and queues:
        raise ValueError(f"queues: only operators have queues, not a {role.value}")
    token = token or new_token()
    if len(token) < 16:
        raise ValueError("token: must be at least 16 characters")
    if ttl_h is not None and not ttl_h > 0:
        raise ValueError(f"ttl_h: must be > 0 hours, got {ttl_h}")
    expires_at = None if ttl_h is None else datetime.now(UTC) + timedelta(hours=ttl_h)
    entry = TokenEntry(name=name, role=role, queues=list(queues), sha256=hash_token(token), expires_at=expires_at)
    content = _read_file(path)
    content.tokens = [t for t in content.tokens if t.name != name] + [entry]
    _write_file(path, content)
    return token


def revoke_token(path: Path, name: str) -> bool:
    content = _read_file(path)
    kept = [t for t in content.tokens if t.name != name]
    if len(kept) == len(content.tokens):
        return False
    content.tokens = kept
    _write_file(path, content)
    return True


def token_summary(path: Path) -> list[dict[str, Any]]:
    return [
        {"name": t.name, "role": t.role.value, "queues": t.queues}
        | ({"expires_at": t.expires_at.isoformat()} if t.expires_at else {})
        for t in _read_file(path).tokens
    ]


def demo_tokens(path: Path, queues: Sequence[str]) -> dict[str, str]:
    """Issue fresh demo tokens (an operator for ``queues``, a supervisor, a service) into ``path``."""
    issued = {
        "operator": issue_token(path, "demo-operator", Role.OPERATOR, list(queues)),
        "supervisor": issue_token(path, "demo-supervisor", Role.SUPERVISOR),
        "service": issue_token(path, "demo-service", Role.SERVICE),
    }
    return issued
