"""A versioned registry of critic artifacts on a filesystem directory, and the champion/challenger promotion rule.

A critic artifact is the directory a critic's ``save(path)`` writes. The registry never looks inside it beyond
requiring a ``critic.json``: it stores directories, hashes them, and records who is champion.

Layout under the registry root::

    versions/<version>/artifact/        the saved critic directory, copied as is
    versions/<version>/manifest.json    Manifest (artifact_hash filled in by the registry)
    versions/<version>/thresholds.json  (optional) the per-slice thresholds as JSON
    versions/.tmp-<version>-<random>/   a register in progress, or the remains of one that crashed
    champion.json                       ChampionState: the champion, when and why, and the previous champions
    events.jsonl                        append-only log of register / promote / reject / rollback events
    .lock                               flock'ed around every mutating operation

A version becomes visible in one rename of its fully written temporary directory, and the champion changes in one
rename of ``champion.json`` (``schemas.files``), so readers take no lock and never see half a version or half a
champion. The version directories and ``champion.json`` are the truth; ``events.jsonl`` is the audit trail (a crash
between the rename and the log write leaves a version without its register event).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, Field, FiniteFloat, ValidationError, field_validator, model_validator

from critic.artifact import CRITIC_FILE  # every critic's save() writes it; without it, the wrong directory
from critic.errors import RegistryError
from schemas.base import Strict
from schemas.files import TEMP_PREFIX, atomic_directory, atomic_write_text

ARTIFACT_DIR = "artifact"
MANIFEST_FILE = "manifest.json"
THRESHOLDS_FILE = "thresholds.json"
CHAMPION_FILE = "champion.json"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = ".lock"
TMP_PREFIX = TEMP_PREFIX  # what schemas.files names its temporaries

# A version is a directory name: no separators, no leading dot (hidden names are the registry's own temporaries).
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = r"^[0-9a-f]{64}$"
_PACKAGE = "bpm-autopilot"
_REPO_ROOT = Path(__file__).resolve().parents[1]


def _check_version(version: str, field: str = "version") -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"{field}: {version!r} is not a valid version name (letters, digits, '.', '_', '-')")
    return version


def new_version(now: datetime | None = None) -> str:
    """A fresh version name, ``critic-<UTC timestamp>-<8 hex>``; the random suffix keeps two jobs apart."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"critic-{moment:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@functools.cache
def code_version() -> str:
    """``<package version>+<git commit>``, with ``unknown`` for whichever part cannot be found; never raises."""
    try:
        package = metadata.version(_PACKAGE)
    except metadata.PackageNotFoundError:
        package = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git binary, not a checkout, or git hung
        commit = ""
    return f"{package}+{commit or 'unknown'}"


def data_hash(record_ids: Iterable[str], labels: Iterable[int]) -> str:
    """sha256 over the training rows' (record id, label) pairs, independent of row order.

    Sorting makes the hash name the training set rather than the order a query happened to return it in."""
    ids, values = list(record_ids), list(labels)
    if len(ids) != len(values):
        raise ValueError(f"labels: {len(values)} labels for {len(ids)} record_ids")
    pairs: list[tuple[str, int]] = []
    for record_id, label in zip(ids, values, strict=True):
        if not isinstance(record_id, str) or not record_id:
            raise ValueError(f"record_ids: {record_id!r} is not a non-empty string")
        if label not in (0, 1) or isinstance(label, (str, bytes)):  # 0/1 of any int type (numpy included), or bool
            raise ValueError(f"labels: {label!r} (record {record_id!r}) is not 0 or 1")
        pairs.append((record_id, int(label)))
    digest = hashlib.sha256()
    for record_id, value in sorted(pairs):
        # One JSON array per line: unambiguous whatever characters a record id holds.
        digest.update(json.dumps([record_id, value]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def artifact_hash(directory: Path) -> str:
    """sha256 over every file under ``directory``: its relative path, its size and its bytes, in path order."""
    digest = hashlib.sha256()
    files = sorted((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.relative_to(directory).as_posix())
    for path in files:
        relative = path.relative_to(directory).as_posix().encode()
        # Length prefixes keep (path, bytes) boundaries unambiguous: moving bytes between files changes the hash.
        digest.update(f"{len(relative)}:".encode() + relative + f"{path.stat().st_size}:".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class RowCounts(Strict):
    train: int = Field(ge=0)
    calibration: int = Field(ge=0)
    test: int = Field(ge=0)


class Manifest(Strict):
    """What a registered critic is, what it was trained on, how it scored, and which code made it."""

    version: str
    kind: str = Field(min_length=1, description="The critic's kind/name, e.g. its `name` attribute.")
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    window_start: AwareDatetime
    window_end: AwareDatetime
    rows: RowCounts
    data_hash: str = Field(pattern=_SHA256_RE, description="data_hash() over the training rows.")
    artifact_hash: str = Field(
        default="", pattern=r"^([0-9a-f]{64})?$", description="Filled in by CriticRegistry.register."
    )
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict)
    thresholds: dict[str, FiniteFloat | None] = Field(
        default_factory=dict, description="Summary per group; None where the group has no threshold (never accepts)."
    )
    policy_version: str = Field(min_length=1)
    code_version: str = Field(default_factory=code_version, min_length=1)
    alpha: float = Field(gt=0, lt=1)
    delta: float = Field(gt=0, lt=1)
    notes: str = ""

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str) -> str:
        return _check_version(value)

    @model_validator(mode="after")
    def _window_ordered(self) -> Manifest:
        if self.window_end < self.window_start:
            raise ValueError(f"window_end: {self.window_end} is before window_start {self.window_start}")
        return self


class ChampionEntry(Strict):
    version: str
    promoted_at: AwareDatetime
    reason: str


class ChampionState(ChampionEntry):
    """champion.json: the current champion and, most recent last, the champions it replaced."""

    previous: list[ChampionEntry] = Field(default_factory=list)


EventKind = Literal["register", "promote", "reject", "rollback"]


class RegistryEvent(Strict):
    at: AwareDatetime
    kind: EventKind
    version: str
    reason: str = ""
    previous: str | None = Field(default=None, description="The champion this event replaced (promote, rollback).")


@dataclass(frozen=True, slots=True)
class PromotionDecision:
    promote: bool
    reason: str


def _write_json(path: Path, payload: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


class CriticRegistry:
    """Versions of critic artifacts under ``root`` (see the module docstring for the layout).

    Mutations take an exclusive ``flock`` on ``root/.lock``, so jobs on one host (threads or processes) never
    interleave. The lock is not re-entrant: do not call a mutating method while holding it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def _versions_dir(self) -> Path:
        return self.root / "versions"

    def _version_dir(self, version: str) -> Path:
        return self._versions_dir / _check_version(version)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Created lazily so a reader on a read-only mount never needs to write.
        self._versions_dir.mkdir(parents=True, exist_ok=True)
        with (self.root / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # -- writing ---------------------------------------------------------------------------------------------------

    def register(
        self, artifact_dir: str | Path, manifest: Manifest, thresholds: Mapping[str, Any] | None = None
    ) -> str:
        """Copy ``artifact_dir`` in as ``manifest.version``, fill in its artifact_hash; returns the version."""
        source = Path(artifact_dir)
        if not source.is_dir():
            raise ValueError(f"artifact_dir: {source} is not a directory")
        if not (source / CRITIC_FILE).is_file():
            raise ValueError(f"artifact_dir: {source} has no {CRITIC_FILE}; pass the directory a critic's save() wrote")
        thresholds_json: str | None = None
        if thresholds is not None:
            try:
                thresholds_json = json.dumps(dict(thresholds), indent=1, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"thresholds: cannot be written as JSON ({exc})") from exc
        version = manifest.version
        with self._locked():
            final = self._version_dir(version)
            if final.exists():
                raise ValueError(f"manifest.version: {version!r} is already registered")
            # A hard crash skips atomic_directory's clean-up; gc_tmp() collects what it leaves.
            with atomic_directory(final) as tmp:
                shutil.copytree(source, tmp / ARTIFACT_DIR)
                digest = artifact_hash(tmp / ARTIFACT_DIR)
                if manifest.artifact_hash and manifest.artifact_hash != digest:
                    raise ValueError(
                        f"manifest.artifact_hash: {manifest.artifact_hash} does not match {source} ({digest})"
                    )
                stored = manifest.model_copy(update={"artifact_hash": digest})
                _write_json(tmp / MANIFEST_FILE, stored.model_dump_json(indent=1))
                if thresholds_json is not None:
                    _write_json(tmp / THRESHOLDS_FILE, thresholds_json)
            self._append_event("register", version)
        return version

    def promote(self, version: str, reason: str) -> None:
        """Make ``version`` the champion; the current champion moves onto the history that rollback() returns to."""
        if not reason.strip():
            raise ValueError("reason: must say why the version is promoted")
        with self._locked():
            self.artifact_path(version)  # never promote an artifact that is not what was registered
            state = self._champion_state()
            if state is not None and state.version == version:
                raise ValueError(f"version: {version!r} is already the champion")
            history: list[ChampionEntry] = []
            if state is not None:
                history = [
                    *state.previous,
                    ChampionEntry(version=state.version, promoted_at=state.promoted_at, reason=state.reason),
                ]
            self._write_champion(
                ChampionState(version=version, promoted_at=datetime.now(UTC), reason=reason, previous=history)
            )
            self._append_event("promote", version, reason, previous=state.version if state else None)

    def rollback(self, reason: str) -> str:
        """Make the previous champion the champion again; returns it. The demoted version leaves the history."""
        if not reason.strip():
            raise ValueError("reason: must say why the champion is rolled back")
        with self._locked():
            state = self._champion_state()
            if state is None or not state.previous:
                raise RegistryError("rollback: there is no previous champion to return to")
            target = state.previous[-1]
            self.artifact_path(target.version)
            self._write_champion(
                ChampionState(
                    version=target.version, promoted_at=datetime.now(UTC), reason=reason, previous=state.previous[:-1]
                )
            )
            self._append_event("rollback", target.version, reason, previous=state.version)
            return target.version

    def record_rejection(self, version: str, reason: str) -> None:
        """Log that ``version`` was evaluated and not promoted; nothing else changes."""
        with self._locked():
            self.manifest(version)
            self._append_event("reject", version, reason)

    def gc_tmp(self) -> list[Path]:
        """Remove what crashed registers and promotions left behind; returns the removed paths."""
        if not self._versions_dir.is_dir():
            return []
        with self._locked():  # a register in progress holds the lock, so its temporary is never collected
            removed = [
                p
                for folder in (self._versions_dir, self.root)
                for p in folder.iterdir()
                if p.name.startswith(TMP_PREFIX)
            ]
            for path in removed:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        return removed

    def _write_champion(self, state: ChampionState) -> None:
        atomic_write_text(self.root / CHAMPION_FILE, state.model_dump_json(indent=1))

    def _append_event(self, kind: EventKind, version: str, reason: str = "", previous: str | None = None) -> None:
        event = RegistryEvent(at=datetime.now(UTC), kind=kind, version=version, reason=reason, previous=previous)
        path = self.root / EVENTS_FILE
        with path.open("a+b") as handle:
            # A crash mid-append leaves a line without its newline; drop it so the next line is not glued onto it.
            size = handle.seek(0, os.SEEK_END)
            if size:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    handle.seek(0)
                    content = handle.read()
                    handle.truncate(content.rfind(b"\n") + 1)
            handle.write(event.model_dump_json().encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())

    # -- reading ---------------------------------------------------------------------------------------------------

    def versions(self) -> list[Manifest]:
        """Every registered version, oldest ``created_at`` first; in-progress or crashed registers are not listed."""
        if not self._versions_dir.is_dir():
            return []
        names = [p.name for p in self._versions_dir.iterdir() if not p.name.startswith(".")]
        return sorted((self.manifest(name) for name in names), key=lambda m: (m.created_at, m.version))

    def manifest(self, version: str) -> Manifest:
        directory = self._version_dir(version)
        if not directory.is_dir():
            raise RegistryError(f"version {version!r} is not registered in {self.root}")
        path = directory / MANIFEST_FILE
        try:
            manifest = Manifest.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise RegistryError(f"version {version!r}: unreadable {path} ({exc})") from exc
        if manifest.version != version:
            raise RegistryError(f"version {version!r}: {path} names version {manifest.version!r}")
        return manifest

    def artifact_path(self, version: str) -> Path:
        """The stored critic directory, after checking its hash against the manifest (reads every file)."""
        manifest = self.manifest(version)
        path = self._version_dir(version) / ARTIFACT_DIR
        if not path.is_dir():
            raise RegistryError(f"version {version!r}: artifact directory {path} is missing")
        actual = artifact_hash(path)
        if actual != manifest.artifact_hash:
            raise RegistryError(
                f"version {version!r}: artifact hash {actual} does not match the manifest's {manifest.artifact_hash or '(none)'};"
                " the artifact was modified or corrupted after registration"
            )
        return path

    def thresholds(self, version: str) -> dict[str, Any] | None:
        self.manifest(version)
        path = self._version_dir(version) / THRESHOLDS_FILE
        if not path.exists():
            return None
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"version {version!r}: unreadable {path} ({exc})") from exc
        if not isinstance(loaded, dict):
            raise RegistryError(f"version {version!r}: {path} does not hold a JSON object")
        return loaded

    def champion(self) -> str | None:
        state = self._champion_state()
        return state.version if state else None

    def champion_history(self) -> list[str]:
        """The champions rollback() would return to, most recent last."""
        state = self._champion_state()
        return [entry.version for entry in state.previous] if state else []

    def _champion_state(self) -> ChampionState | None:
        path = self.root / CHAMPION_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return ChampionState.model_validate_json(raw)
        except ValidationError as exc:
            raise RegistryError(f"unreadable {path} ({exc})") from exc

    def events(self) -> list[RegistryEvent]:
        """The event log in order. An unterminated last line is a crash mid-append and is skipped."""
        path = self.root / EVENTS_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        lines = raw.split(b"\n")
        events: list[RegistryEvent] = []
        for number, line in enumerate(lines[:-1], start=1):  # lines[-1] is b"" or an unterminated remnant
            try:
                events.append(RegistryEvent.model_validate_json(line))
            except ValidationError as exc:
                raise RegistryError(f"{path}:{number}: unreadable event ({exc})") from exc
        return events


def decide_promotion(
    champion_metrics: Mapping[str, float] | None,
    challenger_metrics: Mapping[str, float],
    thresholds_hold: bool,
    min_gain: float = 0.0,
    metric: str = "aurc",
    lower_is_better: bool = True,
) -> PromotionDecision:
    """Champion/challenger: promote only a challenger whose thresholds hold and that beats the champion on ``metric``.

    Both metric dicts must be measured on the SAME fresh held-out feedback (neither model trained or calibrated on
    it); otherwise the comparison mixes model quality with sample noise. "Beats" means strictly better and by at
    least ``min_gain``, so a tie keeps the champion (a swap with no gain only adds risk)."""
    if not math.isfinite(min_gain) or min_gain < 0:
        raise ValueError(f"min_gain: {min_gain} must be finite and >= 0")

    def value(metrics: Mapping[str, float], name: str) -> float:
        if metric not in metrics:
            raise ValueError(f"{name}: has no {metric!r} (has {sorted(metrics)})")
        number = float(metrics[metric])
        if not math.isfinite(number):
            raise ValueError(f"{name}: {metric}={number} is not finite")
        return number

    challenger = value(challenger_metrics, "challenger_metrics")
    direction = "lower" if lower_is_better else "higher"
    if champion_metrics is None:
        if thresholds_hold:
            return PromotionDecision(True, f"no champion; challenger {metric}={challenger:.4f} and its thresholds hold")
        return PromotionDecision(
            False,
            f"no champion, but the challenger's thresholds do not hold ({metric}={challenger:.4f}); none promoted",
        )
    champion = value(champion_metrics, "champion_metrics")
    gain = champion - challenger if lower_is_better else challenger - champion
    numbers = (
        f"challenger {metric}={challenger:.4f} vs champion {metric}={champion:.4f} ({direction} is better), "
        f"gain {gain:+.4f}, min_gain {min_gain:.4f}"
    )
    if not thresholds_hold:
        return PromotionDecision(False, f"keep champion: the challenger's thresholds do not hold; {numbers}")
    if gain > 0 and gain >= min_gain:
        return PromotionDecision(True, f"promote: {numbers}")
    return PromotionDecision(False, f"keep champion: the challenger does not beat it by min_gain; {numbers}")
