"""``autopilot demo``: filled in by the sandbox work."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    commands.add_parser("demo", help="run the main job end to end on embedded defaults")
