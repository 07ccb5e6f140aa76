"""The compose stack (deploy/compose.yaml) and the image (deploy/Dockerfile) against the chart: the same image
repository, the same commands and the same AUTOPILOT_* settings as the chart renders; every AUTOPILOT_* name is a
real settings field and every value parses as one; the stack has its broker, database, monitoring, volumes,
healthchecks and start order. No Docker engine runs here: the files are checked as text and YAML."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from service.api.settings import ServiceSettings
from service.cli import build_parser
from tests.deploy.conftest import DEPLOY, REPO, Rendered

pytestmark = pytest.mark.integration

COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
PREFIX = "AUTOPILOT_"
SETTINGS = {PREFIX + name.upper() for name in ServiceSettings.model_fields}

# Documented differences between compose and the chart.
# Commands compose runs that the chart does not: the sandbox's task API stands in for the real BPM on one machine.
COMPOSE_ONLY_COMMANDS = {("sandbox", "serve")}
# AUTOPILOT_* variables set on one side only, with the reason.
# The risk file: compose serves the sandbox as its BPM and mounts the sandbox's rules; the chart renders a user's
# rules from values.risk and sets the variable only when they are given.
COMPOSE_ONLY_ENV: set[str] = {"AUTOPILOT_RISK_FILE"}
CHART_ONLY_ENV: set[str] = set()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _split_image(image: str) -> tuple[str, str]:
    """(repository, tag); the tag may be a compose interpolation such as ${TAG:-0.1.0}."""
    at = image.find(":${")
    if at < 0:
        at = image.rindex(":")
    return image[:at], image[at + 1 :]


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services running the project's image."""
    return {name: svc for name, svc in compose["services"].items() if _split_image(svc["image"])[0] == "bpm-autopilot"}


def _command(args: list[str]) -> tuple[str, ...]:
    """The subcommand path of an ``autopilot`` argument list: the words before the first flag."""
    words: list[str] = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    return tuple(words)


def _compose_env(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {name: {k: str(v) for k, v in svc.get("environment", {}).items()} for name, svc in _ours(compose).items()}


def _chart_env(release: Rendered) -> dict[str, dict[str, str | None]]:
    """AUTOPILOT_* per container: the ConfigMap (envFrom) plus the container's own env (None: from a Secret)."""
    configmaps = {doc["metadata"]["name"]: doc["data"] for doc in release.kinds("ConfigMap")}
    out: dict[str, dict[str, str | None]] = {}
    for key, container in release.containers().items():
        env: dict[str, str | None] = {}
        for source in container.get("envFrom", []):
            env.update(configmaps[source["configMapRef"]["name"]])
        for item in container.get("env", []):
            env[item["name"]] = item.get("value")
        out[key] = {k: v for k, v in env.items() if k.startswith(PREFIX)}
    return out


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "postgres", "api", "worker", "retrain", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["postgres"]["image"] == "postgres:16"
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["retrain"]["profiles"] == ["jobs"]  # run on demand (the CronJob's job)
    for name in ("kafka", "postgres", "api", "prometheus", "grafana", "bpm"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("api", "worker"):
        needs = services[name]["depends_on"]
        assert needs["kafka"]["condition"] == needs["postgres"]["condition"] == "service_healthy", name
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    # Volumes: the store (PostgreSQL's data) and the shared /data (policy, critic registry).
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ("api", "worker", "retrain"):
        assert any(v.split(":")[:2] == ["autopilot-data", "/data"] for v in services[name]["volumes"]), name
    assert {"postgres-data", "autopilot-data"} <= set(compose["volumes"])
    # Prometheus loads the alert rules and scrapes the API; Grafana gets the dashboard.
    prom_mounts = " ".join(services["prometheus"]["volumes"])
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml" in prom_mounts
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert "/etc/prometheus/alerts.yml" in prom["rule_files"]
    targets = [t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "api:8000" in targets
    graf_mounts = " ".join(services["grafana"]["volumes"])
    assert "./grafana/bpm-autopilot.json:" in graf_mounts and "./grafana/provisioning/" in graf_mounts
    for mount in (*services["prometheus"]["volumes"], *services["grafana"]["volumes"]):
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (DEPLOY / source).exists(), mount


def test_same_image_repository(compose: dict[str, Any], default_release: Rendered) -> None:
    assert set(_ours(compose)) == {"bpm", "api", "worker", "retrain"}
    compose_repos = {_split_image(svc["image"])[0] for svc in _ours(compose).values()}
    chart_repos = {_split_image(c["image"])[0] for c in default_release.containers().values()}
    assert compose_repos == chart_repos == {"bpm-autopilot"}
    tags = {_split_image(svc["image"])[1] for svc in _ours(compose).values()}
    chart_tags = {_split_image(c["image"])[1] for c in default_release.containers().values()}
    assert tags == {"${AUTOPILOT_IMAGE_TAG:-0.1.0}"} and chart_tags == {"0.1.0"}
    build = compose["services"]["bpm"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_same_commands(compose: dict[str, Any], default_release: Rendered) -> None:
    compose_commands = {_command(svc["command"]) for svc in _ours(compose).values()}
    chart_commands = {_command(c["args"]) for c in default_release.containers().values()}
    assert chart_commands == {("serve",), ("worker",), ("critic", "retrain")}
    assert chart_commands <= compose_commands
    assert compose_commands - chart_commands == COMPOSE_ONLY_COMMANDS


def test_same_settings(compose: dict[str, Any], default_release: Rendered) -> None:
    compose_names = set().union(*(env.keys() for env in _compose_env(compose).values()))
    chart_names = set().union(*(env.keys() for env in _chart_env(default_release).values()))
    compose_names = {n for n in compose_names if n.startswith(PREFIX)}
    assert compose_names - chart_names == COMPOSE_ONLY_ENV, sorted(compose_names - chart_names)
    assert chart_names - compose_names == CHART_ONLY_ENV, sorted(chart_names - compose_names)
    # Per process too: the API and the workers get the same names in both.
    compose_env = _compose_env(compose)
    chart_env = _chart_env(default_release)
    chart_api = next(env for key, env in chart_env.items() if key.endswith("-api/api"))
    chart_worker = next(env for key, env in chart_env.items() if key.endswith("-worker/worker"))
    assert set(compose_env["api"]) - COMPOSE_ONLY_ENV == set(chart_api)
    assert set(compose_env["worker"]) - COMPOSE_ONLY_ENV == set(chart_worker)
    assert compose_env["api"]["AUTOPILOT_WORKERS"] == chart_api["AUTOPILOT_WORKERS"] == "0"
    # What `autopilot worker` requires (docs/runtime.md, "Running a worker").
    required = {"KAFKA_BOOTSTRAP", "BPM_URL", "POLICY_DIR", "REGISTRY_DIR", "DATABASE_URL"}
    for env in (compose_env["worker"], chart_worker):
        assert {PREFIX + name for name in required} <= set(env)


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", line))
    return env


def test_every_name_is_a_real_setting(compose: dict[str, Any], release: Rendered) -> None:
    used = set().union(*(env.keys() for env in _compose_env(compose).values()))
    used |= set().union(*(env.keys() for env in _chart_env(release).values()))
    used |= set(_dockerfile_env())
    used = {n for n in used if n.startswith(PREFIX)} - {"AUTOPILOT_IMAGE_TAG"}  # compose's own interpolation
    assert used, "no AUTOPILOT_* settings found"
    assert not used - SETTINGS, f"not ServiceSettings fields: {sorted(used - SETTINGS)}"


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return ServiceSettings()


def test_values_parse_as_settings(compose: dict[str, Any], release: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    """The values both sides set are valid settings (types, enums, ranges), read the way the service reads them."""
    for name, env in _compose_env(compose).items():
        if not env:
            continue  # the sandbox BPM reads no settings
        expanded = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
        settings = _settings_from(expanded, monkeypatch)
        assert settings.kafka_bootstrap == "kafka:9092", name
        assert settings.database_url and settings.database_url.startswith("postgresql+psycopg://"), name
    for key, env in _chart_env(release).items():
        literal = {k: v for k, v in env.items() if v is not None}  # Secret-backed values are checked by name only
        settings = _settings_from(literal, monkeypatch)
        assert str(settings.registry_dir) == "/data/registry" and str(settings.policy_dir) == "/data/policy", key
    image = _settings_from(_dockerfile_env(), monkeypatch)
    assert image.host == "0.0.0.0" and image.port == 8000


def test_arguments_parse(
    compose: dict[str, Any], default_release: Rendered, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every argument list compose and the chart pass to ``autopilot`` parses with the real command line (flags
    exist, choices and numbers are valid)."""
    argument_lists = {f"compose {name}": svc["command"] for name, svc in _ours(compose).items()}
    argument_lists |= {key: c["args"] for key, c in default_release.containers().items()}
    parser = build_parser()
    for where, args in argument_lists.items():
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: autopilot {' '.join(args)}: {capsys.readouterr().err.strip()}")
        assert callable(parsed.handler), where


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE)
    assert len(stages) >= 2, "multi-stage: a builder and the runtime"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text and stages[-1][0] == "${PYTHON_IMAGE}"
    assert (
        "pip install -c constraints.txt '.[sandbox]'" in text
    )  # torch pinned through the constraints file, as make does
    assert "download.pytorch.org/whl/cpu" in text  # the CPU build of torch
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    final = text[text.rindex("FROM ") :]
    assert re.search(r"^USER 10001(:10001)?$", final, flags=re.MULTILINE)
    assert "--uid 10001" in final
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", final.replace("\\\n", " "), flags=re.MULTILINE)
    assert healthcheck, "HEALTHCHECK missing"
    assert "urllib" in healthcheck.group(1) and "/healthz" in healthcheck.group(1)
    assert 'ENTRYPOINT ["autopilot"]' in final and 'CMD ["serve"]' in final
    # The packages the image copies are the ones setuptools installs.
    copied = set(re.findall(r"^COPY (\w+) \./\1$", text, flags=re.MULTILINE))
    assert copied == {"schemas", "policy", "critic", "service", "sandbox", "importers", "lab"}
    # The ignore file BuildKit uses for this Dockerfile and the documented deploy/.dockerignore are the same.
    assert (DEPLOY / "Dockerfile.dockerignore").read_text() == (DEPLOY / ".dockerignore").read_text()
    kept = [line[1:] for line in (DEPLOY / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for pattern in kept:
        assert (REPO / pattern.split("/")[0]).exists(), pattern
