"""What marks a saved policy directory, readable without loading torch (the service checks its settings first)."""

from __future__ import annotations

from pathlib import Path

POLICY_FILE = "policy.json"  # an LMPolicy (also the LM at the top of a combined directory)
COMBINED_FILE = "combined.json"  # a CombinedPolicy


def is_policy_dir(path: str | Path) -> bool:
    """Whether the directory holds a saved policy of either kind (``policy.combined.load_policy`` loads it)."""
    root = Path(path)
    return (root / COMBINED_FILE).is_file() or (root / POLICY_FILE).is_file()
