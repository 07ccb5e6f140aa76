"""An ASGI app under uvicorn in a background thread, on a given or a free port: the demo's service and every test
or benchmark that needs a real HTTP server (the sandbox's task API, the autopilot API)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn

Lifespan = Literal["auto", "on", "off"]
DEFAULT_KEEP_ALIVE_S = 75
"""Seconds an idle keep-alive connection stays open (``ServiceSettings.keep_alive_s``'s default): above the idle
timeouts of client pools and proxies, so that the client, not the server, closes an idle connection."""


class ServerThread:
    """``start`` returns once the server listens (or raises RuntimeError); ``url`` is ``http://host:port``."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        lifespan: Lifespan = "auto",
        log_level: str = "warning",
        name: str = "http-server",
        keep_alive_s: int = DEFAULT_KEEP_ALIVE_S,
    ) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level=log_level, lifespan=lifespan, timeout_keep_alive=keep_alive_s
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.host = host
        self.url = ""

    def start(self, timeout_s: float = 20.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread died while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout_s:.0f} s")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]  # port 0: the one the OS picked
        self.url = f"http://{self.host}:{port}"
        return self

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the server to exit and wait for its thread (at most ``timeout_s``)."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[ServerThread]:
    """``ServerThread(app, ...)`` started for the block and stopped after it."""
    server = ServerThread(app, host, port, **options).start()
    try:
        yield server
    finally:
        server.stop()
