"""The embedded broker never outlives its parent (issue 17, finding 7): a parent killed with SIGKILL takes its
broker along, and a broker left behind anyway (started without the parent-death signal) is found through the
pid file and killed by the next start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from service.runtime.bus.broker import EmbeddedBroker, _alive, _port_open, free_port, reap_stale

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from service.runtime.bus import broker as b
    pid_file, port, die = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    if not die:
        b._die_with_parent = lambda: None  # what an older version (or another platform) did
    started = b.EmbeddedBroker(port=port, pid_file=pid_file).start()
    print(json.dumps({"broker": started.pid}), flush=True)
    time.sleep(600)
    """
)


def wait_until(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def start_parent(tmp_path: Path, port: int, die_with_parent: bool) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "broker.pid"), str(port), "1" if die_with_parent else "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line, "the parent died before starting its broker"
    return parent, int(json.loads(line)["broker"])


def test_a_broker_dies_with_its_parent_killed_by_sigkill(tmp_path: Path) -> None:
    port = free_port()
    parent, broker_pid = start_parent(tmp_path, port, die_with_parent=True)
    assert _alive(broker_pid) and _port_open("127.0.0.1", port)
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    assert wait_until(lambda: not _alive(broker_pid), 5.0), "the broker outlived its parent"
    assert wait_until(lambda: not _port_open("127.0.0.1", port), 5.0)


def test_a_restart_kills_a_broker_left_behind(tmp_path: Path) -> None:
    port = free_port()
    parent, broker_pid = start_parent(tmp_path, port, die_with_parent=False)
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    # What a leak looks like: the parent is gone (reaped above) and the broker keeps listening.
    assert _alive(broker_pid) and _port_open("127.0.0.1", port), "no leak to clean up"
    try:
        # The restart: same data directory (pid file), same port.
        with EmbeddedBroker(port=port, pid_file=tmp_path / "broker.pid") as broker:
            assert not _alive(broker_pid)
            assert broker.pid != broker_pid and _port_open("127.0.0.1", port)
            assert json.loads((tmp_path / "broker.pid").read_text())["pid"] == broker.pid
        assert not (tmp_path / "broker.pid").exists()  # a clean stop removes it
    finally:
        if _alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)


def test_a_live_parents_broker_is_left_alone(tmp_path: Path) -> None:
    port = free_port()
    parent, broker_pid = start_parent(tmp_path, port, die_with_parent=True)
    try:
        assert reap_stale(tmp_path / "broker.pid") is None
        assert _alive(broker_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: not _alive(broker_pid), 5.0)
