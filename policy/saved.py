"""What marks a saved policy directory, readable without loading torch (the service checks its settings first)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

POLICY_FILE = "policy.json"  # an LMPolicy (also the LM at the top of a combined directory)
COMBINED_FILE = "combined.json"  # a CombinedPolicy


def is_policy_dir(path: str | Path) -> bool:
    """Whether the directory holds a saved policy of either kind (``policy.combined.load_policy`` loads it)."""
    root = Path(path)
    return (root / COMBINED_FILE).is_file() or (root / POLICY_FILE).is_file()


def read_meta(root: Path, name: str, format_version: int, what: str) -> dict[str, Any]:
    """The metadata file ``name`` of a saved policy directory; FileNotFoundError naming ``what`` it is not, or
    ValueError for another format version."""
    meta_path = root / name
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root} is not {what} (no {name})")
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    if meta.get("format_version") != format_version:
        raise ValueError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}")
    return meta
