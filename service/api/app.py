"""create_app: the FastAPI application around a started ``AutopilotService``.

Errors are answered, never raised as 500s for bad input: request validation -> 422 naming the field (FastAPI's
own), a payload that fails a rule checked in the service (``InputError``: a limit, an action the screen does not
allow) -> 422 naming the field, a body over the size limit -> 413, an unknown thing -> 404, a stale one -> 409,
another operator's queue -> 403, a full policy queue -> 429 and a request that waited past the policy timeout
-> 503 (both with Retry-After). Anything else is a bug, also an internal ValueError: logged with its traceback and
an error id, answered 500 with that id and no details.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from policy.batching import BatcherFull
from service.api.auth import TokenStore
from service.api.context import AutopilotService
from service.api.errors import ConflictError, ForbiddenError, InputError, NotFoundError, ServiceBusyError
from service.api.inbox_hub import InboxHub
from service.api.limits import BodySizeLimit
from service.api.models import ErrorDetail, ValidationErrorDetail
from service.api.routers import blockers, copilot, health, inbox, pages, qa, sessions, supervisor
from service.api.routers.inbox import inbox_items
from service.runtime.adapters.base import CaseNotFoundError

log = logging.getLogger(__name__)

DESCRIPTION = """Selective autopilot for BPM customer-support work.

Roles (bearer tokens): **operator** (copilot, own inbox), **supervisor** (everything, stages, kill switch),
**service** (copilot, starting sessions). Pages: `/ui/sidebar` (operators), `/ui/dashboard` (supervisors).
"""


def _detail(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False)]


def create_app(service: AutopilotService, tokens: TokenStore, *, manage_service: bool = False) -> FastAPI:
    """The app. ``manage_service``: start the service on startup and stop it on shutdown (``autopilot serve``);
    otherwise the caller owns its lifetime (tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_service:
            service.start()
        try:
            yield
        finally:
            if manage_service:
                service.stop()

    app = FastAPI(title="bpm-autopilot", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.state.tokens = tokens
    hub = InboxHub(
        lambda queues, limit: inbox_items(service, queues, limit), tokens, resync_s=service.settings.inbox_poll_s
    )
    service.on_inbox_change(hub.changed)
    app.state.inbox_hub = hub

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape without the offending input: it may be large (echoing a 1 MB body back) or not even
        # JSON-encodable (1e309 parses as infinity), which would turn a client error into a 500.
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail})

    @app.exception_handler(ValidationError)
    async def schema_error(request: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content=jsonable_encoder({"detail": _detail(exc)})
        )

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        # FastAPI's own 422 shape, so clients parse one format.
        return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": exc.detail()})

    @app.exception_handler(NotFoundError)
    @app.exception_handler(CaseNotFoundError)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        # A LookupError's str() is the repr of its message (quotes around it); args[0] is the message itself.
        message = str(exc.args[0]) if exc.args else str(exc)
        return JSONResponse(status_code=status.HTTP_404_NOT_FOUND, content={"detail": message})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's fault: the id ties the answer to the log line with the traceback.
        error_id = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            content={"detail": f"internal error {error_id}", "error_id": error_id},
        )

    @app.exception_handler(ConflictError)
    async def conflict(request: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})

    @app.exception_handler(ForbiddenError)
    async def forbidden(request: Request, exc: ForbiddenError) -> JSONResponse:
        return JSONResponse(status_code=status.HTTP_403_FORBIDDEN, content={"detail": str(exc)})

    @app.exception_handler(BatcherFull)
    async def busy(request: Request, exc: BatcherFull) -> JSONResponse:
        # Backpressure instead of an unbounded wait: the client is told when to come back (whole seconds).
        return JSONResponse(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            content={"detail": str(exc)},
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
        )

    @app.exception_handler(ServiceBusyError)
    async def overloaded(request: Request, exc: ServiceBusyError) -> JSONResponse:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content={"detail": str(exc)},
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
        )

    protected = {
        401: {"model": ErrorDetail, "description": "no token, or an unknown or revoked one"},
        403: {"model": ErrorDetail, "description": "the caller's role may not do this"},
        422: {"model": ValidationErrorDetail, "description": "the request breaks a schema rule (the field is named)"},
    }
    for module in (copilot, inbox, qa, sessions, supervisor, blockers):
        app.include_router(module.router, responses=protected)  # type: ignore[arg-type]
    for module in (health, pages):
        app.include_router(module.router)
    # Outermost: an oversized body is refused before anything reads it.
    app.add_middleware(BodySizeLimit, max_bytes=service.settings.max_body_bytes)
    return app
