"""The application factory: one platform per app, held in ``app.state`` and handed to routes by dependency."""

from __future__ import annotations

from fastapi import FastAPI

from sandbox.api.errors import install_handlers
from sandbox.api.routers import actions, cases, health, processes, tasks
from sandbox.platform import SandboxPlatform
from sandbox.scenario import Scenario

API_PREFIX = "/api/v1"

_TAGS = [
    {"name": "health", "description": "Liveness."},
    {"name": "processes", "description": "The deployed process definitions."},
    {"name": "cases", "description": "Process instances: start, list, read the UI state and (sandbox only) outcome."},
    {"name": "tasks", "description": "A case's ready user tasks, their forms, and completing them."},
    {"name": "actions", "description": "UI actions on the current screen."},
]


def create_app(scenario: Scenario | None = None, seed: int = 0, platform: SandboxPlatform | None = None) -> FastAPI:
    """The task API over ``platform``, or over a new platform for ``scenario`` and ``seed``.

    Route handlers are plain ``def``: FastAPI runs them in its thread pool, and the platform's lock serialises the
    changes, so a slow engine step never blocks the event loop.
    """
    app = FastAPI(
        title="BPM sandbox task API",
        version="1.0",
        description="The sandbox BPM platform behind a REST task API shaped like a real BPM's: cases, their ready "
        "user tasks and forms, UI actions, task completion. `GET /cases/{case_id}/outcome` exists in the sandbox "
        "only.",
        openapi_tags=_TAGS,
    )
    app.state.platform = platform if platform is not None else SandboxPlatform(scenario, seed)
    for module in (health, processes, cases, tasks, actions):
        app.include_router(module.router, prefix=API_PREFIX)
    install_handlers(app)
    return app
