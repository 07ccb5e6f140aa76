"""Critic directories on disk: the atomic writer and the ``critic.json`` reader every critic kind uses.

A saved critic is a directory holding ``critic.json`` (``{"kind": ..., "params": ...}`` plus whatever the kind
needs) and any model files beside it. The directory is written complete under a temporary sibling name and
renamed into place, so a reader never sees half a critic. Loading any kind is ``critic.persist.load_critic``,
which imports the kinds; this module imports none of them, so each kind can use it without an import circle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.files import atomic_directory

CRITIC_FILE = "critic.json"


def write_critic_dir(path: str | Path, meta: dict[str, Any], write_files: Callable[[Path], None] | None = None) -> Path:
    """Write ``meta`` as ``critic.json`` (and, through ``write_files(tmp_dir)``, any model files) into ``path``,
    replacing an existing directory there only once the new one is complete."""
    if "kind" not in meta:
        raise ValueError("meta: needs a 'kind' so that load_critic can dispatch on it")
    target = Path(path)
    with atomic_directory(target) as tmp:
        if write_files is not None:
            write_files(tmp)
        (tmp / CRITIC_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return target


def read_critic_meta(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """``critic.json`` of a critic directory; ValueError naming the path if it is missing, unreadable, or (with
    ``kind``) of another kind."""
    meta_path = Path(path) / CRITIC_FILE
    if not meta_path.is_file():
        raise ValueError(f"{path}: not a critic directory (no {CRITIC_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("kind"), str):
        raise ValueError(f"{meta_path}: expected a JSON object with a string 'kind'")
    if kind is not None and meta["kind"] != kind:
        raise ValueError(f"{meta_path}: kind {meta['kind']!r}, expected {kind!r}")
    return meta
