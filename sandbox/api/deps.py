"""Dependencies shared by the routers: the platform held in ``app.state`` and the lock for check-then-act routes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request

from sandbox.platform import SandboxPlatform


def get_platform(request: Request) -> SandboxPlatform:
    platform: SandboxPlatform = request.app.state.platform
    return platform


Platform = Annotated[SandboxPlatform, Depends(get_platform)]


@contextmanager
def transaction(platform: SandboxPlatform) -> Iterator[None]:
    """Hold the platform's lock across several calls.

    Each public platform call locks on its own, but a route that checks and then acts (complete a task: find the
    ready task, then click its submit button) must not let a concurrent request move the case to another screen in
    between, and some reads (``open_tasks``, ``outcome``, the case fields) take no lock at all. The lock is an RLock,
    so the platform's own calls re-enter it. It is private to the platform, hence this one place that touches it.
    """
    with platform.lock:
        yield
