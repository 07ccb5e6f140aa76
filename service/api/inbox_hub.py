"""InboxHub: the live inboxes of one API process, woken by events, closed on revocation.

Every open ``GET /api/v1/inbox/stream`` is a ``Subscription`` here. One task (on the server's event loop) does
all the work, so an open stream costs nothing while nothing happens:

- **Woken by events.** ``changed()`` (thread-safe) is called by the service when the inbox may have changed: its
  own answers and stops at once, and every record on ``deferrals``, ``operator-decisions`` and ``sessions``
  (``service.runtime.bus.watch.TopicWatcher``), which covers what other processes do. The task then re-reads the
  store once per distinct (queues, limit) among the open streams, not once per stream, and sends the encoded
  event to the streams whose list changed. A re-read every ``resync_s`` even without an event is the safety net
  for a change nobody announced.
- **Revocation and expiry.** Every ``auth_check_s`` the task authenticates each stream's token again (the token
  file is re-read within a second of a change): a revoked or expired token, or one whose role or queues changed,
  closes its streams with a last ``closed`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.api.auth import Principal, TokenStore

log = logging.getLogger(__name__)

Key = tuple[tuple[str, ...] | None, int]
Items = Callable[[list[str] | None, int], list[Any]]  # (queues, limit) -> InboxItems (blocking: a store read)


@dataclass(eq=False)
class Subscription:
    key: Key
    token: str
    principal: Principal
    event: asyncio.Event = field(default_factory=asyncio.Event)
    message: str | None = None  # the latest encoded inbox event not yet sent
    closed: str | None = None  # why the stream must end

    async def next(self, timeout_s: float) -> str | None:
        """The next inbox event (``event: inbox`` or a final ``event: closed``); None after ``timeout_s`` of
        nothing (the caller sends a keep-alive)."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout_s)
        except TimeoutError:
            return None
        self.event.clear()
        if self.closed is not None:
            return f"event: closed\ndata: {json.dumps({'reason': self.closed})}\n\n"
        message, self.message = self.message, None
        return message


def encode(queues: list[str] | None, items: Sequence[Any]) -> str:
    payload = {"queues": queues, "items": [item.model_dump(mode="json") for item in items]}
    return f"event: inbox\ndata: {json.dumps(payload)}\n\n"


class InboxHub:
    def __init__(
        self,
        items: Items,
        tokens: TokenStore,
        *,
        resync_s: float = 5.0,
        auth_check_s: float = 1.0,
        debounce_s: float = 0.02,
    ) -> None:
        self.items = items
        self.tokens = tokens
        self.resync_s = resync_s
        self.auth_check_s = auth_check_s
        self.debounce_s = debounce_s
        self.reads = 0  # store reads (for the benchmark: one per key per change, not one per stream)
        self._subs: set[Subscription] = set()
        self._last: dict[Key, tuple[list[str], str]] = {}  # per key: the ids and the encoded event last sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # ---- called from anywhere ------------------------------------------------------------------------------------

    def changed(self) -> None:
        """The inbox may have changed (thread-safe; cheap when nobody listens)."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or not self._subs:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed (shutting down)
            loop.call_soon_threadsafe(wake.set)

    @property
    def open_streams(self) -> int:
        return len(self._subs)

    # ---- called on the event loop --------------------------------------------------------------------------------

    async def subscribe(self, principal: Principal, token: str, queues: list[str] | None, limit: int) -> Subscription:
        self._ensure_task()
        key: Key = (None if queues is None else tuple(sorted(queues)), limit)
        sub = Subscription(key, token, principal)
        if key not in self._last:
            await self._read(key)
        sub.message = self._last[key][1]
        sub.event.set()
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        if not any(other.key == sub.key for other in self._subs):
            self._last.pop(sub.key, None)  # nobody watches it: read it afresh for the next subscriber

    def _ensure_task(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="inbox-hub")

    async def _read(self, key: Key) -> bool:
        """Re-read one key's list; True (and every subscriber of it told) if it changed."""
        queues = None if key[0] is None else list(key[0])
        items = await asyncio.to_thread(self.items, queues, key[1])
        self.reads += 1
        ids = [item.deferral.deferral_id for item in items]
        last = self._last.get(key)
        if last is not None and last[0] == ids:
            return False
        message = encode(queues, items)
        self._last[key] = (ids, message)
        for sub in self._subs:
            if sub.key == key:
                sub.message = message
                sub.event.set()
        return True

    async def _refresh(self) -> None:
        for key in {sub.key for sub in self._subs}:
            try:
                await self._read(key)
            except Exception:  # the store away for a moment: the next event or resync tries again
                log.warning("inbox hub: reading the inbox failed", exc_info=True)

    def _check_tokens(self) -> None:
        seen: dict[str, Principal | None] = {}  # once per distinct token, however many streams it holds open
        for sub in list(self._subs):
            if sub.token not in seen:
                seen[sub.token] = self.tokens.authenticate(sub.token)
            found = seen[sub.token]
            if found is None:
                reason = "token revoked or expired"
            elif found != sub.principal:
                reason = "token's role or queues changed"
            else:
                continue
            sub.closed = reason
            sub.event.set()
            self._subs.discard(sub)

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        next_auth = time.monotonic() + self.auth_check_s
        next_resync = time.monotonic() + self.resync_s
        while True:
            timeout = max(0.0, min(next_auth, next_resync) - time.monotonic())
            try:
                await asyncio.wait_for(wake.wait(), timeout)
                woken = True
            except TimeoutError:
                woken = False
            try:
                now = time.monotonic()
                if woken:
                    await asyncio.sleep(self.debounce_s)  # a burst of records is one re-read
                    wake.clear()
                if self._subs and (woken or now >= next_resync):
                    await self._refresh()
                    next_resync = time.monotonic() + self.resync_s
                elif now >= next_resync:
                    next_resync = now + self.resync_s
                if now >= next_auth:
                    if self._subs:
                        self._check_tokens()
                    next_auth = now + self.auth_check_s
            except Exception:
                log.exception("inbox hub: round failed")
