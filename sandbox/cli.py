"""``autopilot sandbox ...``: filled in by the sandbox work."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser("sandbox", help="the reference BPM platform")
    parser.add_subparsers(dest="sandbox_command", required=True, metavar="SUBCOMMAND")
