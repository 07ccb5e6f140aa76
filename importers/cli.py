"""``autopilot import xes|csv|uilog``: filled in by the importers work."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser("import", help="import real logs as traces")
    parser.add_subparsers(dest="import_command", required=True, metavar="FORMAT")
