"""The ``autopilot`` command line. Each package registers its own subcommands; handlers import lazily so the
command starts fast and a broken optional part never breaks the others."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

from critic.cli import register as register_critic
from critic.errors import RegistryError
from importers.cli import register as register_import
from policy.cli import register as register_policy
from service.api.cli import register as register_api


def sandbox_installed() -> bool:
    """The sandbox extra (``pip install 'bpm-autopilot[sandbox]'``) brings the BPMN engine the simulator runs on."""
    return importlib.util.find_spec("SpiffWorkflow") is not None


def _sandbox_runtime_factory() -> Any:
    from sandbox.harness import service_runtime

    return service_runtime


class CliError(Exception):
    """A user-facing error: printed as ``error: ...`` with exit status 2, no traceback."""


def _schemas_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.export import export_json_schemas

    paths = export_json_schemas(Path(args.dir))
    for path in paths:
        print(path)
    return 0


def _worker(args: argparse.Namespace) -> int:
    """One SessionWorker in this process until SIGTERM/SIGINT (what the Helm Deployment runs); see docs/runtime.md."""
    import json
    import logging

    from service.runtime.bus.topics import Topics
    from service.runtime.settings import RuntimeSettings
    from service.runtime.worker_process import build_worker_process, check_bus, worker_spec_from_settings

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    flags = {
        "policy_dir": args.policy_dir,
        "registry_dir": args.registry_dir,
        "bpm_url": args.bpm_url,
        "worker_id": args.worker_id,
    }
    settings = RuntimeSettings(**{name: value for name, value in flags.items() if value is not None})
    spec = worker_spec_from_settings(settings)  # cheap checks first: a wrong setting fails in milliseconds
    check_bus(spec.bootstrap, Topics(spec.topic_prefix), settings.partitions, settings.bus_timeout_s)
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    metrics = None
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        from service.runtime.metrics import LagCollector, RuntimeMetrics

        metrics = RuntimeMetrics()
        start_http_server(settings.metrics_port, registry=metrics.registry)
    process = build_worker_process(spec, metrics=metrics)
    worker = process.worker
    if metrics is not None:
        metrics.registry.register(LagCollector(lambda: {worker.group_id: int(worker.stats()["consumer"]["lag"])}))
    ready = {"event": "ready", "worker_id": spec.worker_id, "critic": spec.critic_path, "policy": spec.policy_path}
    print(json.dumps(ready), flush=True)
    process.run()  # returns after SIGTERM/SIGINT, its sessions released and everything closed
    print(json.dumps({"event": "stopped", "stats": worker.stats()}, default=str), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autopilot", description="Selective LLM autopilot for BPM support work.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    schemas = commands.add_parser("schemas", help="the contracts")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True, metavar="SUBCOMMAND")
    export = schemas_sub.add_parser("export", help="write the JSON Schema of every payload into DIR")
    export.add_argument("dir", metavar="DIR")
    export.set_defaults(handler=_schemas_export)

    worker = commands.add_parser(
        "worker",
        help="run one background-session worker until SIGTERM (settings from AUTOPILOT_* environment variables)",
        description=(
            "Runs one SessionWorker: joins the workers group on AUTOPILOT_KAFKA_BOOTSTRAP, keeps sessions in "
            "AUTOPILOT_DATABASE_URL, drives the BPM task API at AUTOPILOT_BPM_URL with the policy in "
            "AUTOPILOT_POLICY_DIR and the champion critic of AUTOPILOT_REGISTRY_DIR. SIGTERM stops it gracefully "
            "(its sessions are released for the other workers). Flags override the environment."
        ),
    )
    worker.add_argument("--policy-dir", help="a saved policy directory (AUTOPILOT_POLICY_DIR)")
    worker.add_argument("--registry-dir", help="the critic registry (AUTOPILOT_REGISTRY_DIR)")
    worker.add_argument("--bpm-url", help="the BPM task API root (AUTOPILOT_BPM_URL)")
    worker.add_argument("--worker-id", help="default: host name, process id and a random suffix")
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker.set_defaults(handler=_worker)

    with_sandbox = sandbox_installed()
    if with_sandbox:  # the simulator and the lab's demo need it; the product's commands do not
        from lab.demo import register as register_demo
        from sandbox.cli import register as register_sandbox

        register_sandbox(commands)
    register_import(commands)
    register_policy(commands)
    register_critic(commands)
    if with_sandbox:
        register_demo(commands)
    register_api(commands, _sandbox_runtime_factory if with_sandbox else None)
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
