"""The policy in processes of its own: a caller's interpreter keeps its core for everything else.

Why. Scoring a state is about a hundred small tensor operations driven from Python, so the interpreter lock is
held for most of it: in one process the policy, the HTTP stack, the session workers and the bus client share one
core however many the machine has (measured: the demo's autopilot stage ran at 1.1 of 2 cores, the policy thread
38% of it; the suggest endpoint was bound by one core's policy rate plus the HTTP stack). ``PolicyProcesses``
loads the saved policy in ``processes`` child processes and has the policy's interface (``propose_batch``,
``version_``), so the runtime, the API's micro-batcher and the sandbox take it in place of the policy.

How. Each child loads the directory as the service does (``policy.combined.load_policy``, the remote scorer when a
server URL is set, the reply guard when enabled), with ``threads`` torch threads, and answers requests on a pipe:
the states go over pickled, the proposals come back the same way (about 0.2 ms a state, against ~10 ms of
scoring). A batch is split into contiguous chunks, one per child, which run at the same time; the answers are put
back in the caller's order. Children start with ``spawn`` (a fork of a process with torch's thread pools, a
tokenizer and a bus client running is not safe); as with any ``spawn`` child, a script that starts them must keep
its top-level code under ``if __name__ == "__main__":`` (the child imports the script's module first).

Failures. A child that raises returns the error, which ``propose_batch`` raises as ``PolicyProcessError`` (the
micro-batcher then re-runs the batch's items one by one, so one bad state fails only its caller). A child that
dies, or does not answer within ``timeout_s``, is stopped and started again on the next call, and the call
raises; the caller's own process is never taken down with it. ``close()`` stops the children (a call after it
starts them again); they are daemons, so they also end with the caller, and a child whose parent is gone reads
the end of its pipe and exits.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from schemas.proposal import Proposal
from schemas.state import UIState

log = logging.getLogger(__name__)

_READY, _OK, _ERROR, _PROPOSE, _CLOSE = "ready", "ok", "error", "propose", "close"


class PolicyProcessError(RuntimeError):
    """A policy process failed to load, raised while proposing, died, or did not answer in time."""


def load_serving_policy(policy_dir: str | Path, *, reply_guard: bool = True, server_url: str | None = None) -> Any:
    """The saved policy as the service runs it, in this process: whichever kind the directory holds, scoring on
    the inference server at ``server_url`` when one is set, behind the reply guard when ``reply_guard``."""
    from policy.combined import load_policy
    from policy.remote import remote_scorer
    from policy.replies import with_reply_guard

    return with_reply_guard(load_policy(policy_dir, scorer=remote_scorer(server_url)), reply_guard)


def serving_policy(
    policy_dir: str | Path,
    *,
    processes: int = 0,
    reply_guard: bool = True,
    threads: int = 1,
    server_url: str | None = None,
) -> Any:
    """``load_serving_policy`` in this process (``processes`` 0) or in ``processes`` children
    (``PolicyProcesses``; ``AUTOPILOT_POLICY_PROCESSES``)."""
    if processes < 0:
        raise ValueError(f"processes: must be >= 0, got {processes}")
    if processes == 0:
        return load_serving_policy(policy_dir, reply_guard=reply_guard, server_url=server_url)
    return PolicyProcesses(
        policy_dir, processes=processes, reply_guard=reply_guard, threads=threads, server_url=server_url
    )


def _serve(conn: Connection, policy_dir: str, reply_guard: bool, threads: int, server_url: str | None) -> None:
    """A child's whole life: load the policy, say ready (with its version), answer until told to stop."""
    try:
        import torch

        torch.set_num_threads(threads)
        policy = load_serving_policy(policy_dir, reply_guard=reply_guard, server_url=server_url)
    except Exception as error:  # the parent raises it with the child's message
        conn.send((_ERROR, f"loading {policy_dir}: {type(error).__name__}: {error}"))
        return
    conn.send((_READY, policy.version_))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message[0] == _CLOSE:
            return
        _, states, k = message
        try:
            conn.send((_OK, policy.propose_batch(states, k)))
        except Exception as error:
            conn.send((_ERROR, f"{type(error).__name__}: {error}"))


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, index: int, args: tuple[Any, ...], start_timeout_s: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child_end, *args), name=f"policy-process-{index}", daemon=True
        )
        self.process.start()
        child_end.close()  # the child holds its own copy: EOF here once it exits
        kind, payload = self.receive(start_timeout_s, "to load the policy")
        if kind != _READY:
            self.stop()
            raise PolicyProcessError(str(payload))
        self.version: str = payload

    def receive(self, timeout_s: float, doing: str) -> tuple[str, Any]:
        try:
            if not self.conn.poll(timeout_s):
                self.stop()
                raise PolicyProcessError(f"{self.process.name} took more than {timeout_s:g} s {doing}; stopped")
            reply: tuple[str, Any] = self.conn.recv()
            return reply
        except (EOFError, OSError):
            self.process.join(timeout=5.0)
            raise PolicyProcessError(
                f"{self.process.name} exited (code {self.process.exitcode}) {doing.replace('to ', 'before it could ')}"
            ) from None

    def alive(self) -> bool:
        return self.process.is_alive() and not self.conn.closed

    def stop(self) -> None:
        if not self.conn.closed:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send((_CLOSE,))
            self.conn.close()
        self.process.join(timeout=5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5.0)


class PolicyProcesses:
    """The saved policy at ``policy_dir`` in ``processes`` child processes, with the policy's ``propose_batch``
    and ``version_`` (see the module docstring). Thread-safe: one batch at a time is in flight."""

    def __init__(
        self,
        policy_dir: str | Path,
        *,
        processes: int = 1,
        reply_guard: bool = True,
        threads: int = 1,
        server_url: str | None = None,
        timeout_s: float = 60.0,
        start_timeout_s: float = 300.0,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes: must be >= 1, got {processes}")
        if threads < 1:
            raise ValueError(f"threads: must be >= 1, got {threads}")
        if timeout_s <= 0 or start_timeout_s <= 0:
            raise ValueError("timeout_s and start_timeout_s: must be > 0")
        self.policy_dir = Path(policy_dir)
        self.processes = processes
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._args = (str(self.policy_dir), reply_guard, threads, server_url)
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        self._children: list[_Child | None] = [None] * processes
        try:
            for index in range(processes):
                self._children[index] = _Child(index, self._args, start_timeout_s)
        except BaseException:
            self.close()
            raise
        versions = {child.version for child in self._children if child is not None}
        if len(versions) != 1:  # the directory changed while the children loaded it
            self.close()
            raise PolicyProcessError(f"policy_dir: the processes loaded different versions {sorted(versions)}")
        self.version_: str = versions.pop()

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        if not states:
            return []
        with self._lock:
            chunks = _chunks(len(states), self.processes)
            children = [self._child(index) for index in range(len(chunks))]  # restarts happen before any send
            failure: str | None = None
            sent: list[tuple[int, _Child, int, int]] = []
            for index, ((start, end), child) in enumerate(zip(chunks, children, strict=True)):
                try:
                    child.conn.send((_PROPOSE, list(states[start:end]), k))
                except (OSError, ValueError) as error:
                    self._forget(index)
                    failure = failure or f"{child.process.name}: sending failed ({error})"
                    continue
                sent.append((index, child, start, end))
            out: list[Proposal | None] = []
            for index, child, start, end in sent:
                try:  # every child's reply is read, even after a failure, so no stale reply is left in a pipe
                    kind, payload = child.receive(self.timeout_s, f"to propose for {end - start} states")
                except PolicyProcessError as error:
                    self._forget(index)
                    failure = failure or str(error)
                    continue
                if kind != _OK:
                    failure = failure or str(payload)
                elif len(payload) != end - start:
                    failure = failure or f"{child.process.name}: {len(payload)} proposals for {end - start} states"
                else:
                    out.extend(payload)
            if failure is not None:
                raise PolicyProcessError(failure)
            return out

    def _child(self, index: int) -> _Child:
        child = self._children[index]
        if child is not None and child.alive():
            return child
        if child is not None:
            child.stop()
        if not self._closed:  # it died or was stopped after a failure (after close() it starts quietly)
            log.warning("policy process %d is not running; starting it again", index)
            self.restarts += 1
        self._children[index] = None
        child = _Child(index, self._args, self.start_timeout_s)
        if child.version != self.version_:
            child.stop()
            raise PolicyProcessError(
                f"policy_dir: the restarted process loaded version {child.version}, not {self.version_}"
            )
        self._children[index] = child
        if all(c is not None for c in self._children):
            self._closed = False
        return child

    def _forget(self, index: int) -> None:
        child = self._children[index]
        if child is not None:
            child.stop()
        self._children[index] = None

    def pids(self) -> list[int | None]:
        """The children's process ids (None for one that is not running)."""
        return [None if c is None or not c.alive() else c.process.pid for c in self._children]

    def close(self) -> None:
        """Stop the children (a service that stops); a later call starts them again."""
        with self._lock:
            self._closed = True
            for index in range(len(self._children)):
                self._forget(index)

    def __enter__(self) -> PolicyProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``n`` items in at most ``parts`` contiguous chunks of nearly equal size (none empty)."""
    parts = min(parts, n)
    size, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds
