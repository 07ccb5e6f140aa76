"""Atomic writes: the new content replaces the target whole, and a failure leaves the old target and no temporary."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.files import TEMP_PREFIX, atomic_directory, atomic_file, atomic_write_lines, atomic_write_text


class Boom(Exception):
    pass


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_text_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    assert atomic_write_text(target, "one") == target
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert names(tmp_path) == ["a.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_text_mode(tmp_path: Path) -> None:
    target = tmp_path / "tokens.json"
    atomic_write_text(target, "{}", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_write_lines_streams_and_counts(tmp_path: Path) -> None:
    target = tmp_path / "rows.jsonl"
    assert atomic_write_lines(target, (str(i) for i in range(3))) == 3
    assert target.read_text() == "0\n1\n2\n"
    assert atomic_write_lines(target, []) == 0
    assert target.read_text() == ""


def test_lines_that_fail_midway_leave_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "rows.jsonl"
    target.write_text("old\n")

    def lines() -> Iterator[str]:
        yield "new"
        raise Boom

    with pytest.raises(Boom):
        atomic_write_lines(target, lines())
    assert target.read_text() == "old\n"
    assert names(tmp_path) == ["rows.jsonl"]


def test_a_failing_rename_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fail(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert names(tmp_path) == ["a.txt"]


def test_the_temporary_is_beside_the_target_and_named_for_clean_up(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    with atomic_file(target) as handle:
        handle.write("x")
        [tmp] = [p for p in tmp_path.iterdir()]
        assert tmp.name.startswith(f"{TEMP_PREFIX}a.txt-") and not target.exists()  # invisible until the end
    assert target.read_text() == "x" and names(tmp_path) == ["a.txt"]


def test_a_missing_parent_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "a.txt", "x")


def test_directory_is_created_with_its_parents(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "model"
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(f"{TEMP_PREFIX}model-")
        (tmp / "weights.bin").write_bytes(b"1")
        assert not target.exists()
    assert names(target) == ["weights.bin"]
    assert names(target.parent) == ["model"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_directory_replaces_a_non_empty_one_whole(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"0")
    (target / "sub").mkdir()
    (target / "sub" / "x").write_text("x")
    with atomic_directory(target) as tmp:
        (tmp / "new.bin").write_bytes(b"1")
    assert names(target) == ["new.bin"]
    assert names(tmp_path) == ["model"]  # the old directory moved aside is gone too


def test_directory_failure_leaves_the_old_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"0")
    with pytest.raises(Boom), atomic_directory(target) as tmp:
        (tmp / "new.bin").write_bytes(b"1")
        raise Boom
    assert names(target) == ["old.bin"]
    assert names(tmp_path) == ["model"]


def test_directory_failing_second_rename_puts_the_old_target_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_bytes(b"0")
    real = os.replace
    calls: list[str] = []

    def second_fails(src: Any, dst: Any) -> None:
        calls.append(Path(src).name)
        if len(calls) == 2:
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="disk full"), atomic_directory(target) as tmp:
        (tmp / "new.bin").write_bytes(b"1")
    monkeypatch.undo()
    assert len(calls) == 3  # aside, the failed swap, back
    assert names(target) == ["old.bin"]
    assert names(tmp_path) == ["model"]
