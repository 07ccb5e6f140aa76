"""The ``autopilot`` command line. Each package registers its own subcommands; handlers import lazily so the
command starts fast and a broken optional part never breaks the others."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from critic.cli import register as register_critic
from critic.registry import RegistryError
from importers.cli import register as register_import
from policy.cli import register as register_policy
from sandbox.cli import register as register_sandbox
from service.demo import register as register_demo


class CliError(Exception):
    """A user-facing error: printed as ``error: ...`` with exit status 2, no traceback."""


def _schemas_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.export import export_json_schemas

    paths = export_json_schemas(Path(args.dir))
    for path in paths:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autopilot", description="Selective LLM autopilot for BPM support work.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    schemas = commands.add_parser("schemas", help="the contracts")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True, metavar="SUBCOMMAND")
    export = schemas_sub.add_parser("export", help="write the JSON Schema of every payload into DIR")
    export.add_argument("dir", metavar="DIR")
    export.set_defaults(handler=_schemas_export)

    register_sandbox(commands)
    register_import(commands)
    register_policy(commands)
    register_critic(commands)
    register_demo(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (CliError, RegistryError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
