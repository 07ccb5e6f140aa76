"""Atomic file and directory writes: build the new content under a temporary name beside the target, then rename.

A reader sees the old target or the new one, never half of one, and a failure (an exception, an interrupt) leaves
the old target untouched and removes the temporary. The temporary sits in the target's own directory so that the
rename stays on one file system, where it is atomic.

Why here: every package writes artifacts (traces, feedback, critics, policies, the registry, token files, the JSON
Schemas), and ``schemas`` is the one layer they all may import (the dependency direction points toward it). The
module imports nothing of the project and holds no contract; it is the contracts' own way to reach a disk.

Every temporary this module creates (files, directories and the old directory moved aside) is named
``.tmp-<target name>-<random>``: a process killed midway leaves only names with ``TEMP_PREFIX``, which a
clean-up may collect (``critic.registry.CriticRegistry.gc_tmp`` does).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

TEMP_PREFIX = ".tmp-"


@contextmanager
def atomic_file(path: str | Path, *, mode: int = 0o644) -> Iterator[TextIO]:
    """Yield a text handle on a temporary file beside ``path``; on a clean exit the file is flushed, synced to
    disk, given ``mode`` and renamed over ``path``. The parent directory must exist."""
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def atomic_write_text(path: str | Path, text: str, *, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``text`` atomically; returns the path."""
    with atomic_file(path, mode=mode) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_lines(path: str | Path, lines: Iterable[str], *, mode: int = 0o644) -> int:
    """Replace ``path`` with ``lines`` (each followed by a newline) atomically, streaming them (an iterable that
    raises midway leaves the old file); returns the number of lines written."""
    count = 0
    with atomic_file(path, mode=mode) as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
            count += 1
    return count


@contextmanager
def atomic_directory(path: str | Path, *, mode: int = 0o755) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path`` (creating ``path``'s parents); on a clean exit it
    replaces ``path``, or on an exception it is removed and ``path`` is left as it was.

    ``os.replace`` cannot put a directory over a non-empty one, so an existing target is first renamed aside and
    removed after the new one is in place: between the two renames the target is briefly absent.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target)))
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkdtemp creates 0700
        if target.exists():
            old = target.with_name(f"{_temp_prefix(target)}old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)  # put the old one back: a failure leaves the target as it was
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)


def _temp_prefix(target: Path) -> str:
    return f"{TEMP_PREFIX}{target.name}-"


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; some file systems refuse fsync on a directory, which only costs durability."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
