"""``autopilot serve --sandbox`` as a real process (its own embedded broker, SQLite under its data directory,
uvicorn on loopback) on a data directory prepared from the tests' tiny models: what the red-team suite, the
broker's parent-death test and the streams benchmark run against."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from critic.registry import CriticRegistry, Manifest, RowCounts, data_hash
from service.api.auth import Role, issue_token
from service.runtime.bus.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ("address_change", "refund_damaged")


def prepare_data_dir(data_dir: Path, models: Any) -> dict[str, str]:
    """Save the policy and a registry whose champion is the tests' critic with their thresholds; issue tokens.
    Returns the tokens by role (plus ``other_operator`` with the queue ``warranty_claim``)."""
    policy, critic, thresholds = models
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "policy" / "policy.json").is_file():
        policy.save(data_dir / "policy")
    registry = CriticRegistry(data_dir / "registry")
    if registry.champion() is None:
        now = datetime.now(UTC)
        manifest = Manifest(
            version="critic-red-1",
            kind=critic.name,
            window_start=now,
            window_end=now,
            rows=RowCounts(train=10, calibration=0, test=0),
            data_hash=data_hash(["a"], [1]),
            policy_version="tiny",
            alpha=0.1,
            delta=0.1,
        )
        version = registry.register(critic.save(data_dir / "critic-red-1"), manifest, thresholds.to_dict())
        registry.promote(version, "tests")
    tokens_file = data_dir / "tokens.json"
    return {
        "operator": issue_token(tokens_file, "olga", Role.OPERATOR, list(QUEUES)),
        "other_operator": issue_token(tokens_file, "oscar", Role.OPERATOR, ["warranty_claim"]),
        "supervisor": issue_token(tokens_file, "sam", Role.SUPERVISOR),
        "service": issue_token(tokens_file, "svc", Role.SERVICE),
    }


class ServedProcess:
    """``python -m service.cli serve --sandbox`` on ``data_dir`` (a port of its own); ``start`` waits until
    /readyz answers 200. ``env`` adds AUTOPILOT_* settings."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "AUTOPILOT_WORKERS": "1",
            "AUTOPILOT_PARTITIONS": "2",
            "AUTOPILOT_SANDBOX_CASES": "40",
            "AUTOPILOT_INITIAL_STAGE": "copilot",
            "AUTOPILOT_AUDIT_RATE": "0",
            "AUTOPILOT_AUTO_PROMOTE": "false",
            "AUTOPILOT_SESSION_TIMEOUT_MS": "2000",
            "AUTOPILOT_HEARTBEAT_INTERVAL_MS": "500",
            "AUTOPILOT_TORCH_THREADS": "1",
            "AUTOPILOT_REGISTRY_POLL_S": "0",
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        self.env.pop("AUTOPILOT_KAFKA_BOOTSTRAP", None)  # its own embedded broker
        self.log_path = data_dir / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> ServedProcess:
        command = [sys.executable, "-m", "service.cli", "serve", "--sandbox", "--data-dir", str(self.data_dir)]
        command += ["--port", str(self.port), "--log-level", "WARNING"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve not ready within {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> ServedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def children(pid: int) -> list[int]:
    """Direct child process ids of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pids: list[int], seconds: float) -> float:
    """The share of one core ``pids`` used together over the next ``seconds`` (wall clock)."""
    before = sum(cpu_seconds(p) for p in pids)
    started = time.monotonic()
    time.sleep(seconds)  # measuring over a wall-clock window is the point here
    used = sum(cpu_seconds(p) for p in pids) - before
    return used / (time.monotonic() - started)


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def dump(value: Any) -> str:
    return json.dumps(value, default=str)
