"""Limits at the edge: what one request may cost before any model sees it.

- ``BodySizeLimit``: an ASGI middleware that answers 413 to a body over ``AUTOPILOT_MAX_BODY_BYTES`` before
  reading it (a declared ``Content-Length``) or as soon as the bytes read pass the limit (a chunked body), so an
  oversized request costs the server nothing but the refusal.
- ``check_state``: a UI state sent by a client (suggest, feedback) may have at most ``AUTOPILOT_MAX_CHAT_MESSAGES``
  chat messages, ``AUTOPILOT_MAX_CONTROLS`` controls and ``AUTOPILOT_MAX_PROMPT_CHARS`` characters of text (chat,
  field values and panels: what a prompt could be built from); over a limit is a 422 naming the field and the
  limit.

Within the limits the policy bounds its own work by its truncation rule (``policy.values.CHAT_WINDOW``: the last
32 chat messages are read; the prompt is cut to ``max_prompt_tokens``), so the largest state accepted costs about
what a normal one does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette import status
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.state import UIState
from service.api.errors import InputError


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_body_bytes: int
    max_chat_messages: int
    max_controls: int
    max_prompt_chars: int


def prompt_chars(state: UIState) -> int:
    """The characters of text a prompt could be built from: chat messages, field values, panel fields and rows."""
    total = sum(len(message.text) for message in state.chat)
    total += sum(len(str(value)) for value in state.values.values() if value is not None)
    for panel in state.panels.values():
        total += len(panel.title) + sum(len(k) + len(v) for k, v in panel.fields.items())
        total += sum(len(k) + len(v) for row in panel.rows for k, v in row.items())
    return total


def check_state(state: UIState, limits: EdgeLimits, loc: tuple[str, ...] = ("state",)) -> None:
    """Raise InputError (422) naming the field and the limit when ``state`` is over one."""
    if len(state.chat) > limits.max_chat_messages:
        raise InputError(
            (*loc, "chat"),
            f"{len(state.chat)} chat messages exceed the limit of {limits.max_chat_messages} "
            "(AUTOPILOT_MAX_CHAT_MESSAGES); send the latest ones",
        )
    controls = len(state.screen.controls)
    if controls > limits.max_controls:
        raise InputError(
            (*loc, "screen", "controls"),
            f"{controls} controls exceed the limit of {limits.max_controls} (AUTOPILOT_MAX_CONTROLS)",
        )
    chars = prompt_chars(state)
    if chars > limits.max_prompt_chars:
        raise InputError(
            loc,
            f"{chars} characters of chat, values and panels exceed the prompt limit of {limits.max_prompt_chars} "
            "(AUTOPILOT_MAX_PROMPT_CHARS)",
        )


def _too_large(max_bytes: int, size: int | None) -> str:
    told = f"{size} bytes" if size is not None else "the body"
    return f"body: {told} exceed the limit of {max_bytes} bytes (AUTOPILOT_MAX_BODY_BYTES)"


class _TooLarge(HTTPException):
    """Raised from ``receive`` once a chunked body passes the limit: an HTTPException, so the route's body
    reader passes it on and the app answers it as a 413 (a plain exception would become FastAPI's 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE, _too_large(max_bytes, None), {"Connection": "close"})


class BodySizeLimit:
    """413 for a request body over ``max_bytes`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self, size: int | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        body = json.dumps({"detail": _too_large(self.max_bytes, size)}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        return body, headers

    async def _refuse(self, send: Send, size: int | None) -> None:
        body, headers = self._refusal(size)
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, declared)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, None)


def limits_of(settings: Any) -> EdgeLimits:
    return EdgeLimits(
        max_body_bytes=settings.max_body_bytes,
        max_chat_messages=settings.max_chat_messages,
        max_controls=settings.max_controls,
        max_prompt_chars=settings.max_prompt_chars,
    )
