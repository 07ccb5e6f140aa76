"""The runtime's settings: every field can be set by ``AUTOPILOT_<FIELD>`` in the environment.

``AUTOPILOT_KAFKA_BOOTSTRAP`` selects an existing Kafka cluster instead of the embedded Tansu broker,
``AUTOPILOT_DATABASE_URL`` a database instead of the SQLite file under ``data_dir``, ``AUTOPILOT_RISK_FILE`` the
deployment's risk tiers, always-ask actions and process list (``schemas.risk.RiskPolicy`` as JSON).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.risk import AutonomyStage, RiskPolicy, load_risk_policy
from service.runtime.router import AuditMode


def new_worker_id(index: int) -> str:
    """A worker id unique per incarnation: a restarted process must not inherit (and silently renew) a dead one's
    leases."""
    return f"{socket.gethostname()}-{os.getpid()}-w{index}-{uuid.uuid4().hex[:6]}"


class RuntimeSettings(BaseSettings):
    """The runtime's configuration; every field can be set by ``AUTOPILOT_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="AUTOPILOT_", extra="ignore")

    kafka_bootstrap: str | None = Field(default=None, description="host:port of a Kafka cluster; None: embedded")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; None: SQLite under data_dir")
    data_dir: Path = Path("out/runtime")
    topic_prefix: str = "autopilot."
    partitions: int = Field(default=8, ge=1, description="Partitions per topic (sessions spread over workers)")
    workers: int = Field(default=2, ge=0, description="SessionWorker threads (0: workers run elsewhere)")
    batch_size: int = Field(default=32, ge=1)
    lease_s: float = Field(default=30.0, gt=0)
    max_steps: int = Field(default=40, ge=1)
    audit_rate: float = Field(default=0.05, ge=0.0, lt=1.0)
    audit_mode: AuditMode = Field(
        default=AuditMode.AFTER,
        description="after: audited steps run and are reviewed in the QA queue; before: a human approves them first",
    )
    reply_guard: bool = Field(
        default=True,
        description="Replies' facts checked against the state and guesses turned into questions (policy.replies)",
    )
    operators: int = Field(default=12, ge=1, description="Simulated operators in the pool")
    think_time_s: float = Field(default=0.0, ge=0.0, description="Wall-clock seconds an operator spends per review")
    seed: int = 0
    session_timeout_ms: int = Field(default=6000, ge=1)
    heartbeat_interval_ms: int = Field(default=1000, ge=1)
    fetch_max_wait_ms: int = Field(default=10, ge=0)
    idle_fetch_max_wait_ms: int = Field(
        default=500,
        ge=0,
        description="A consumer's fetch wait after 2 s without records (the bus costs ~nothing when idle; the "
        "first record after a quiet spell waits at most this long)",
    )
    initial_stage: AutonomyStage = Field(
        default=AutonomyStage.COPILOT,
        description="The stage every slice starts in (then promotions, demotions and overrides apply)",
    )
    # A worker in its own process (``autopilot worker``):
    policy_dir: Path | None = Field(default=None, description="A saved policy directory (LMPolicy.save)")
    registry_dir: Path | None = Field(default=None, description="The critic registry; its champion is used")
    bpm_url: str | None = Field(default=None, description="The BPM task API root, e.g. http://bpm:8000/api/v1")
    worker_id: str | None = Field(default=None, description="None: host name, process id and a random suffix")
    torch_threads: int | None = Field(default=None, ge=1, description="Threads of the policy; None: torch's default")
    # The policy's micro-batcher (policy.batching): the workers' steps and the copilot's suggestions are gathered
    # for at most policy_max_wait_ms (or policy_max_batch states) and proposed for in one batched call.
    policy_max_batch: int = Field(default=64, ge=1, description="States per batched policy call")
    policy_max_wait_ms: float = Field(default=2.0, ge=0.0, description="How long a batch waits for more states")
    policy_max_queue: int = Field(
        default=256, ge=1, description="States waiting for the policy beyond which callers get 429 / back off"
    )
    policy_timeout_s: float = Field(default=5.0, gt=0, description="A queued state's deadline (then it fails)")
    policy_server_url: str | None = Field(
        default=None,
        description="An SGLang server holding the policy's checkpoint (docs/deploy.md); None: the weights in process",
    )
    policy_processes: int = Field(
        default=0,
        ge=0,
        description="Child processes that hold the policy (policy.process), so the interpreter's own core serves "
        "HTTP, the bus and the workers; 0: the policy in this process",
    )
    bus_timeout_s: float = Field(default=10.0, gt=0, description="How long a starting worker waits for the broker")
    risk_file: Path | None = Field(
        default=None,
        description="The deployment's risk file (RiskPolicy JSON); None: every action critic-gated, every process",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="A worker process serves /metrics on this port (None: no endpoint)"
    )
    # Every process that runs workers keeps the registry's champion and promotes slices (service.runtime.champion):
    feedback_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the feedback store (labels per slice; the nightly job's input); None: SQLite "
        "under data_dir",
    )
    auto_promote: bool = Field(
        default=True,
        description="Run a promotion round at start and on every new champion (slices whose threshold holds, with "
        "enough labels, go to autopilot)",
    )
    registry_poll_s: float = Field(
        default=30.0, ge=0, description="How often the registry's champion is checked for a hot reload (0: never)"
    )

    @field_validator(
        "kafka_bootstrap",
        "database_url",
        "policy_dir",
        "registry_dir",
        "bpm_url",
        "worker_id",
        "risk_file",
        "feedback_url",
        "policy_server_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty variable (a Helm value left blank) means "not set", not the current directory.
        return None if isinstance(value, str) and not value.strip() else value

    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'runtime.db'}"

    def resolved_feedback_url(self) -> str:
        """The feedback store's URL: ``feedback_url``, or the SQLite file ``feedback.db`` under ``data_dir``."""
        return self.feedback_url or f"sqlite:///{self.data_dir / 'feedback.db'}"

    def risk_policy(self) -> RiskPolicy:
        """The risk file's policy, or the built-in default (every action critic-gated) when none is set."""
        return RiskPolicy() if self.risk_file is None else load_risk_policy(self.risk_file)
