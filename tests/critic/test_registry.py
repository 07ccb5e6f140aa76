"""The critic registry: versions round-trip, tampering is caught, promotion and rollback, crashes and concurrency."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from critic.errors import RegistryError
from critic.registry import (
    CriticRegistry,
    Manifest,
    code_version,
    data_hash,
    decide_promotion,
    new_version,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def make_artifact(directory: Path, payload: bytes = b"\x00weights\xff" * 100) -> Path:
    """A stand-in for what a critic's save() writes: critic.json plus a binary model file in a subdirectory."""
    directory.mkdir(parents=True)
    (directory / "critic.json").write_text(json.dumps({"name": "fake", "format_version": 1}))
    (directory / "model").mkdir()
    (directory / "model" / "weights.bin").write_bytes(payload)
    return directory


def make_manifest(version: str, created_at: datetime = T0, **changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "version": version,
        "kind": "fake",
        "created_at": created_at,
        "window_start": T0 - timedelta(days=7),
        "window_end": T0,
        "rows": {"train": 80, "calibration": 20, "test": 10},
        "data_hash": data_hash(["r1", "r2"], [1, 0]),
        "metrics": {"aurc": 0.12, "auroc": 0.81},
        "thresholds": {"p1/click": 0.9, "p1/type": None},
        "policy_version": "lm-abc",
        "alpha": 0.05,
        "delta": 0.1,
        "notes": "nightly",
    }
    fields.update(changes)
    return Manifest(**fields)


@pytest.fixture
def registry(tmp_path: Path) -> CriticRegistry:
    return CriticRegistry(tmp_path / "registry")


def test_register_list_manifest_round_trip(registry: CriticRegistry, tmp_path: Path) -> None:
    source = make_artifact(tmp_path / "a")
    thresholds = {"p1/click": {"threshold": 0.9, "n": 40}, "p1/type": {"threshold": None, "n": 3}}
    later = registry.register(make_artifact(tmp_path / "b"), make_manifest("critic-b", created_at=T0 + timedelta(1)))
    earlier = registry.register(source, make_manifest("critic-a"), thresholds)

    assert (earlier, later) == ("critic-a", "critic-b")
    assert [m.version for m in registry.versions()] == ["critic-a", "critic-b"]  # by created_at, not register order
    stored = registry.manifest("critic-a")
    assert stored.model_dump(exclude={"artifact_hash"}) == make_manifest("critic-a").model_dump(
        exclude={"artifact_hash"}
    )
    assert len(stored.artifact_hash) == 64
    assert registry.thresholds("critic-a") == thresholds
    assert registry.thresholds("critic-b") is None
    path = registry.artifact_path("critic-a")
    assert (path / "model" / "weights.bin").read_bytes() == (source / "model" / "weights.bin").read_bytes()
    assert [(e.kind, e.version) for e in registry.events()] == [("register", "critic-b"), ("register", "critic-a")]
    assert registry.champion() is None


def test_register_rejects_duplicates_and_bad_input(registry: CriticRegistry, tmp_path: Path) -> None:
    source = make_artifact(tmp_path / "a")
    registry.register(source, make_manifest("critic-a"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(source, make_manifest("critic-a"))
    not_a_critic = tmp_path / "empty"
    not_a_critic.mkdir()
    with pytest.raises(ValueError, match="artifact_dir"):
        registry.register(not_a_critic, make_manifest("critic-b"))
    with pytest.raises(ValueError, match="thresholds"):
        registry.register(source, make_manifest("critic-c"), {"p1/click": float("nan")})
    with pytest.raises(ValueError, match="artifact_hash"):
        registry.register(source, make_manifest("critic-d", artifact_hash="0" * 64))
    assert [m.version for m in registry.versions()] == ["critic-a"]
    assert list((registry.root / "versions").iterdir()) == [registry.root / "versions" / "critic-a"]


def test_manifest_validation() -> None:
    with pytest.raises(ValidationError, match="version"):
        make_manifest("../escape")
    with pytest.raises(ValidationError, match="window_end"):
        make_manifest("critic-a", window_end=T0 - timedelta(days=30))
    with pytest.raises(ValidationError, match="extra"):
        make_manifest("critic-a", unexpected=1)
    with pytest.raises(ValidationError, match="finite"):
        make_manifest("critic-a", metrics={"aurc": float("inf")})
    with pytest.raises(ValidationError, match="timezone"):
        make_manifest("critic-a", window_start=datetime(2026, 1, 1))
    version = new_version(T0)
    assert version.startswith("critic-20261123T020000Z-") and len(version) == len("critic-20261123T020000Z-") + 8
    make_manifest(version)  # a generated version is a valid one


def test_data_hash_names_the_rows_not_their_order() -> None:
    base = data_hash(["a", "b", "c"], [1, 0, 1])
    assert data_hash(["c", "a", "b"], np.array([1, 1, 0])) == base
    assert data_hash(["a", "b", "c"], [1, 1, 1]) != base  # a flipped label
    assert data_hash(["a", "b", "d"], [1, 0, 1]) != base  # a different row
    with pytest.raises(ValueError, match="labels"):
        data_hash(["a", "b"], [1])
    with pytest.raises(ValueError, match="labels"):
        data_hash(["a"], [2])


def test_code_version_names_the_commit_and_never_fails_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    code_version.cache_clear()
    git = shutil.which("git")
    if git is not None:
        head = subprocess.run([git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        if head.returncode == 0:
            assert code_version() == f"0.1.0+{head.stdout.strip()}" or code_version().endswith(head.stdout.strip())
    code_version.cache_clear()
    monkeypatch.setenv("PATH", "")  # no git binary to find
    try:
        assert code_version().endswith("+unknown")
    finally:
        code_version.cache_clear()


@pytest.mark.parametrize("tamper", ["modify", "add", "remove"])
def test_hash_verification_detects_a_changed_artifact(registry: CriticRegistry, tmp_path: Path, tamper: str) -> None:
    registry.register(make_artifact(tmp_path / "a"), make_manifest("critic-a"))
    path = registry.artifact_path("critic-a")
    weights = path / "model" / "weights.bin"
    if tamper == "modify":
        data = bytearray(weights.read_bytes())
        data[5] ^= 1  # one bit, same size
        weights.write_bytes(bytes(data))
    elif tamper == "add":
        (path / "extra.bin").write_bytes(b"")
    else:
        weights.unlink()
    with pytest.raises(RegistryError, match="modified or corrupted"):
        registry.artifact_path("critic-a")
    with pytest.raises(RegistryError, match="modified or corrupted"):
        registry.promote("critic-a", "looks good")  # a corrupted artifact never becomes champion
    assert registry.champion() is None


def test_promote_then_rollback_restores_previous_champion(registry: CriticRegistry, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        registry.register(make_artifact(tmp_path / name), make_manifest(f"critic-{name}"))
    registry.promote("critic-a", "first champion")
    registry.promote("critic-b", "aurc 0.10 < 0.12")
    registry.promote("critic-c", "aurc 0.09 < 0.10")
    assert registry.champion() == "critic-c"
    assert registry.champion_history() == ["critic-a", "critic-b"]

    assert registry.rollback("bad acceptance rate in production") == "critic-b"
    assert registry.champion() == "critic-b"
    assert registry.rollback("still bad") == "critic-a"  # the demoted critic-c is not returned to
    assert registry.champion() == "critic-a"
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback("again")
    assert registry.champion() == "critic-a"

    with pytest.raises(ValueError, match="already the champion"):
        registry.promote("critic-a", "again")
    with pytest.raises(RegistryError, match="not registered"):
        registry.promote("critic-z", "unknown")
    registry.record_rejection("critic-c", "aurc 0.13 > 0.12")
    events = [(e.kind, e.version, e.previous) for e in registry.events() if e.kind != "register"]
    assert events == [
        ("promote", "critic-a", None),
        ("promote", "critic-b", "critic-a"),
        ("promote", "critic-c", "critic-b"),
        ("rollback", "critic-b", "critic-c"),
        ("rollback", "critic-a", "critic-b"),
        ("reject", "critic-c", None),
    ]
    assert registry.champion() == "critic-a"  # a rejection changes nothing but the log


def test_rollback_without_history_fails(registry: CriticRegistry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback("nothing yet")
    registry.register(make_artifact(tmp_path / "a"), make_manifest("critic-a"))
    registry.promote("critic-a", "first")
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback("only one champion ever")
    assert registry.champion() == "critic-a"


def test_promotion_decision_cases() -> None:
    first = decide_promotion(None, {"aurc": 0.2}, thresholds_hold=True)
    assert first.promote and "no champion" in first.reason
    assert not decide_promotion(None, {"aurc": 0.2}, thresholds_hold=False).promote

    better = decide_promotion({"aurc": 0.12}, {"aurc": 0.10}, thresholds_hold=True)
    assert better.promote and "0.1000" in better.reason and "0.1200" in better.reason
    worse = decide_promotion({"aurc": 0.12}, {"aurc": 0.14}, thresholds_hold=True)
    assert not worse.promote and "0.1400" in worse.reason and "0.1200" in worse.reason
    assert not decide_promotion({"aurc": 0.12}, {"aurc": 0.12}, thresholds_hold=True).promote  # a tie keeps it
    broken = decide_promotion({"aurc": 0.12}, {"aurc": 0.01}, thresholds_hold=False)
    assert not broken.promote and "thresholds do not hold" in broken.reason

    assert not decide_promotion({"aurc": 0.12}, {"aurc": 0.11}, thresholds_hold=True, min_gain=0.02).promote
    assert decide_promotion({"aurc": 0.12}, {"aurc": 0.09}, thresholds_hold=True, min_gain=0.02).promote
    assert decide_promotion({"auroc": 0.8}, {"auroc": 0.85}, True, metric="auroc", lower_is_better=False).promote
    assert not decide_promotion({"auroc": 0.8}, {"auroc": 0.75}, True, metric="auroc", lower_is_better=False).promote

    with pytest.raises(ValueError, match="challenger_metrics"):
        decide_promotion({"aurc": 0.1}, {"auroc": 0.9}, True)
    with pytest.raises(ValueError, match="champion_metrics"):
        decide_promotion({"auroc": 0.1}, {"aurc": 0.9}, True)
    with pytest.raises(ValueError, match="min_gain"):
        decide_promotion({"aurc": 0.1}, {"aurc": 0.09}, True, min_gain=-1)


def test_failure_during_register_leaves_registry_unchanged(
    registry: CriticRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.register(make_artifact(tmp_path / "a"), make_manifest("critic-a"))
    registry.promote("critic-a", "first")
    before = (registry.versions(), registry.champion(), registry.events())

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        registry.register(make_artifact(tmp_path / "b"), make_manifest("critic-b"))
    monkeypatch.undo()

    assert (registry.versions(), registry.champion(), registry.events()) == before
    assert sorted(p.name for p in (registry.root / "versions").iterdir()) == ["critic-a"]  # its temporary is gone
    registry.register(make_artifact(tmp_path / "b2"), make_manifest("critic-b"))  # the name is still free


# A job killed while copying: copytree copies, then the process dies before anything else runs.
CRASH = """
import os, shutil, sys
from pathlib import Path
from critic.registry import CriticRegistry, Manifest
real = shutil.copytree
def crash(src, dst, **kwargs):
    shutil.copytree = real  # copytree recurses through the module attribute
    real(src, dst, **kwargs)
    os._exit(3)
shutil.copytree = crash
CriticRegistry(sys.argv[1]).register(sys.argv[2], Manifest.model_validate_json(Path(sys.argv[3]).read_text()))
"""


def test_crash_during_register_leaves_stale_tmp_that_is_ignored_and_collected(
    registry: CriticRegistry, tmp_path: Path
) -> None:
    registry.register(make_artifact(tmp_path / "a"), make_manifest("critic-a"))
    registry.promote("critic-a", "first")
    before = (registry.versions(), registry.champion())
    manifest_file = tmp_path / "b.json"
    manifest_file.write_text(make_manifest("critic-b").model_dump_json())

    result = subprocess.run(
        [sys.executable, "-c", CRASH, str(registry.root), str(make_artifact(tmp_path / "b")), str(manifest_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr

    stale = [p for p in (registry.root / "versions").iterdir() if p.name.startswith(".tmp-")]
    assert len(stale) == 1 and (stale[0] / "artifact" / "critic.json").exists()  # the crash really left a remnant
    assert (registry.versions(), registry.champion()) == before
    with pytest.raises(RegistryError, match="not registered"):
        registry.manifest("critic-b")

    assert registry.gc_tmp() == stale
    assert not stale[0].exists()
    registry.register(make_artifact(tmp_path / "b2"), make_manifest("critic-b"))
    assert [m.version for m in registry.versions()] == ["critic-a", "critic-b"]


def test_events_skip_a_half_written_last_line(registry: CriticRegistry, tmp_path: Path) -> None:
    registry.register(make_artifact(tmp_path / "a"), make_manifest("critic-a"))
    with (registry.root / "events.jsonl").open("ab") as handle:
        handle.write(b'{"at": "2026-11-23T02:00:00Z", "ki')  # a crash mid-append
    assert [e.kind for e in registry.events()] == ["register"]
    registry.promote("critic-a", "first")  # the next append drops the remnant instead of gluing onto it
    assert [e.kind for e in registry.events()] == ["register", "promote"]


# Each process registers its own version and then races the other for a shared one.
CONCURRENT = """
import sys, time
from pathlib import Path
from critic.registry import CriticRegistry, Manifest
root, artifact, own, shared, start = sys.argv[1:6]
deadline = time.monotonic() + 60
while not Path(start).exists():  # poll: both processes start registering together
    assert time.monotonic() < deadline, "the start file never came"
    time.sleep(0.005)
registry = CriticRegistry(root)
registry.register(artifact, Manifest.model_validate_json(Path(own).read_text()))
try:
    registry.register(artifact, Manifest.model_validate_json(Path(shared).read_text()))
    print("shared:registered")
except ValueError as exc:
    print("shared:" + str(exc))
"""


def test_concurrent_registers_from_two_processes(registry: CriticRegistry, tmp_path: Path) -> None:
    start = tmp_path / "start"
    shared = tmp_path / "shared.json"
    shared.write_text(make_manifest("critic-shared").model_dump_json())
    processes = []
    for name in ("a", "b"):
        own = tmp_path / f"{name}.json"
        own.write_text(make_manifest(f"critic-{name}").model_dump_json())
        artifact = make_artifact(tmp_path / name, payload=os.urandom(2_000_000))  # copies that take a moment
        args = [str(registry.root), str(artifact), str(own), str(shared), str(start)]
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", CONCURRENT, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    start.touch()
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr.decode()
        outputs.append(stdout.decode().strip())

    assert sorted(outputs)[1] == "shared:registered"
    assert "already registered" in sorted(outputs)[0]  # exactly one won the shared name
    versions = sorted(m.version for m in registry.versions())
    assert versions == ["critic-a", "critic-b", "critic-shared"]
    for version in versions:
        registry.artifact_path(version)  # every stored artifact is whole and matches its manifest
    assert sorted(e.version for e in registry.events()) == versions


def test_lock_serialises_mutations_across_threads(
    registry: CriticRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_artifact(tmp_path / "a")
    done = threading.Event()
    asked = threading.Event()  # the worker thread is at its flock(LOCK_EX)
    refused: list[bool] = []  # whether the lock was taken at that moment (a non-blocking try on the same handle)
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if threading.current_thread() is worker and operation == fcntl.LOCK_EX:
            try:
                real_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                refused.append(False)
                real_flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                refused.append(True)
            asked.set()
        real_flock(fd, operation)

    def register() -> None:
        registry.register(source, make_manifest("critic-a"))
        done.set()

    worker = threading.Thread(target=register)
    monkeypatch.setattr(fcntl, "flock", flock)
    with registry._locked():  # another job holding the lock
        worker.start()
        assert asked.wait(10)
        # The worker's flock blocks until the job lets go, so the register cannot have happened yet.
        assert refused == [True]
        assert not done.is_set() and registry.versions() == []
    worker.join(timeout=10)
    assert done.is_set() and [m.version for m in registry.versions()] == ["critic-a"]


def test_reading_an_empty_registry_needs_no_writes(tmp_path: Path) -> None:
    registry = CriticRegistry(tmp_path / "missing")
    assert registry.versions() == [] and registry.champion() is None and registry.events() == []
    assert registry.gc_tmp() == []
    assert not registry.root.exists()
    with pytest.raises(RegistryError, match="not registered"):
        registry.artifact_path("critic-a")
