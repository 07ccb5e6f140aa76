"""Errors as HTTP answers: 404 for unknown ids, 409 for conflicts with the case's state, 422 in FastAPI's format.

A 422 raised by a route has the same shape as FastAPI's own request validation errors (``detail`` is a list of
``{type, loc, msg, input}``), so a client handles a schema error and a screen-validation error the same way.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from SpiffWorkflow.exceptions import SpiffWorkflowException

from sandbox.platform import CaseEnded, CaseNotFound


class Problem(BaseModel):
    """The body of a 404 or 409 answer."""

    detail: str


Responses = dict[int | str, dict[str, Any]]  # the ``responses`` argument of a route: extra answers for OpenAPI

NOT_FOUND: Responses = {status.HTTP_404_NOT_FOUND: {"model": Problem, "description": "Unknown id"}}
CONFLICT: Responses = {status.HTTP_409_CONFLICT: {"model": Problem, "description": "Conflicts with the case's state"}}


def unprocessable_response(description: str) -> Responses:
    # FastAPI documents its HTTPValidationError model for 422 already; this only adds what else answers 422.
    return {status.HTTP_422_UNPROCESSABLE_CONTENT: {"description": description}}


def field_error(loc: tuple[str | int, ...], msg: str, type_: str, input_: object = None) -> dict[str, Any]:
    """One entry of a 422's ``detail``, shaped like pydantic's errors."""
    return {"type": type_, "loc": loc, "msg": msg, "input": input_}


def unprocessable(*errors: dict[str, Any]) -> RequestValidationError:
    """A 422 answered by FastAPI's own handler, so it looks like any other request validation error."""
    return RequestValidationError(list(errors))


def _case_not_found(request: Request, exc: Exception) -> JSONResponse:
    # KeyError's str() quotes its argument; the case id is the first arg.
    case_id = exc.args[0] if exc.args else ""
    return JSONResponse(status_code=status.HTTP_404_NOT_FOUND, content={"detail": f"case {case_id!r} not found"})


def _case_ended(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=status.HTTP_409_CONFLICT, content={"detail": str(exc)})


def _engine_error(request: Request, exc: Exception) -> JSONResponse:
    # The engine could not route the case after a screen was submitted (a gateway reads data the screen did not
    # produce, e.g. a lookup that was never run). That is a conflict with the case's data, not a server fault.
    return JSONResponse(
        status_code=status.HTTP_409_CONFLICT,
        content={"detail": f"the process engine could not continue the case: {exc}"},
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CaseNotFound, _case_not_found)
    app.add_exception_handler(CaseEnded, _case_ended)
    app.add_exception_handler(SpiffWorkflowException, _engine_error)
