"""``autopilot serve`` (the API, the pages and the in-process runtime) and ``autopilot tokens`` (issue, rotate,
revoke, list)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The sandbox's runtime factory, when the sandbox extra is installed: the composition root (``service.cli``) passes
# a loader for it, so this module never imports the simulator.
SandboxFactoryLoader = Callable[[], Any]


def _settings(args: argparse.Namespace) -> Any:
    from service.api.settings import ServiceSettings

    flags = {
        "data_dir": args.data_dir,
        "host": args.host,
        "port": args.port,
        "bpm_url": args.bpm_url,
        "simulated_operators": True if args.simulated_operators else None,
    }
    return ServiceSettings(**{k: v for k, v in flags.items() if v is not None})


def _serve(args: argparse.Namespace, sandbox_factory: SandboxFactoryLoader | None = None) -> int:
    import uvicorn

    from service.api.app import create_app
    from service.api.auth import TokenStore
    from service.api.context import AutopilotService
    from service.api.redaction import install_redaction

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    install_redaction()
    settings = _settings(args)
    tokens_file = settings.resolved_tokens_file()
    if not tokens_file.is_file():
        raise ValueError(f"tokens_file: {tokens_file} does not exist; issue tokens with `autopilot tokens issue`")
    runtime_factory = None
    if args.sandbox:
        if settings.bpm_url:
            raise ValueError("sandbox: --sandbox and a BPM URL exclude each other; give one")
        if sandbox_factory is None:
            raise ValueError("sandbox: the sandbox extra is not installed (pip install 'bpm-autopilot[sandbox]')")
        runtime_factory = sandbox_factory()
    elif args.simulated_operators:
        raise ValueError("simulated_operators: only with --sandbox (the simulated operators work sandbox cases)")
    service = AutopilotService.from_settings(settings, runtime_factory)  # fails fast, naming the setting
    app = create_app(service, TokenStore(tokens_file), manage_service=True)
    print(
        json.dumps(
            {
                "event": "serving",
                "url": f"http://{settings.host}:{settings.port}",
                "sidebar": f"http://{settings.host}:{settings.port}/ui/sidebar",
                "dashboard": f"http://{settings.host}:{settings.port}/ui/dashboard",
                "docs": f"http://{settings.host}:{settings.port}/docs",
                "tokens_file": str(tokens_file),
            }
        ),
        flush=True,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        timeout_keep_alive=settings.keep_alive_s,
        log_config=None,
        access_log=args.access_log,
    )
    return 0


def _tokens_file(args: argparse.Namespace) -> Path:
    """``--file``, else the file ``autopilot serve`` uses with the same ``--data-dir`` and environment
    (AUTOPILOT_TOKENS_FILE, else DATA_DIR/tokens.json); said on stderr, so nobody edits the wrong file unawares."""
    if args.file:
        path = Path(args.file)
    else:
        from service.api.settings import ServiceSettings

        flags = {"data_dir": args.data_dir} if args.data_dir else {}
        path = Path(ServiceSettings(**flags).resolved_tokens_file())
    print(f"tokens file: {path}", file=sys.stderr)
    return path


def _issue(args: argparse.Namespace) -> int:
    from service.api.auth import issue_token

    token = issue_token(_tokens_file(args), args.name, args.role, args.queue or [], ttl_h=args.ttl_h)
    print(token)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from service.api.auth import revoke_token

    if not revoke_token(_tokens_file(args), args.name):
        raise ValueError(f"name: no token named {args.name!r}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from service.api.auth import token_summary

    print(json.dumps(token_summary(_tokens_file(args)), indent=2))
    return 0


def register(commands: Any, sandbox_factory: SandboxFactoryLoader | None = None) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the API, the operator sidebar and the supervisor dashboard with the runtime (AUTOPILOT_* settings)",
        description=(
            "Serves the API (/docs), /ui/sidebar, /ui/dashboard and /metrics, and runs the session runtime in this "
            "process: the embedded Kafka broker unless AUTOPILOT_KAFKA_BOOTSTRAP is set, the store "
            "(AUTOPILOT_DATABASE_URL or SQLite under the data directory), AUTOPILOT_WORKERS worker threads, the "
            "policy and the registry's champion critic (AUTOPILOT_POLICY_DIR / AUTOPILOT_REGISTRY_DIR, default "
            "under the data directory). Tokens: AUTOPILOT_TOKENS_FILE (default DATA_DIR/tokens.json)."
        ),
    )
    serve.add_argument("--data-dir", help="where make demo left the policy, registry and store (AUTOPILOT_DATA_DIR)")
    serve.add_argument("--host", help="AUTOPILOT_HOST (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="AUTOPILOT_PORT (default 8000)")
    serve.add_argument("--bpm-url", help="your BPM's task API root (AUTOPILOT_BPM_URL); required unless --sandbox")
    serve.add_argument("--sandbox", action="store_true", help="serve the embedded sandbox BPM (demo and trials)")
    serve.add_argument(
        "--simulated-operators", action="store_true", help="with --sandbox: the sandbox's operators answer deferrals"
    )
    serve.add_argument("--access-log", action="store_true", help="log every request (paths only; bodies never)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(handler=lambda args: _serve(args, sandbox_factory))

    tokens = commands.add_parser("tokens", help="issue, rotate, revoke and list API tokens (stored hashed)")
    sub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="SUBCOMMAND")
    issue = sub.add_parser("issue", help="issue a token (or rotate it: same name); prints it once")
    issue.add_argument("--name", required=True)
    issue.add_argument("--role", required=True, choices=["operator", "supervisor", "service"])
    issue.add_argument("--queue", action="append", help="an operator's queue (repeat for several)")
    issue.add_argument("--ttl-h", type=float, help="the token expires this many hours from now (default: never)")
    revoke = sub.add_parser("revoke", help="remove a token; takes effect within a second, no restart")
    revoke.add_argument("--name", required=True)
    listing = sub.add_parser("list", help="names, roles and queues (never the tokens)")
    for command, handler in ((issue, _issue), (revoke, _revoke), (listing, _list)):
        command.add_argument("--file", help="the token file (default AUTOPILOT_TOKENS_FILE or DATA_DIR/tokens.json)")
        command.add_argument("--data-dir", help="the data directory `autopilot serve --data-dir` was given")
        command.set_defaults(handler=handler)
