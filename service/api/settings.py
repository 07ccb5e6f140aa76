"""ServiceSettings: the API's configuration from ``AUTOPILOT_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from service.api.server_thread import DEFAULT_KEEP_ALIVE_S
from service.runtime.settings import RuntimeSettings


class ServiceSettings(RuntimeSettings):
    """The runtime's settings plus the API's own. Unset ``policy_dir`` / ``registry_dir`` default to
    ``data_dir/policy`` and ``data_dir/registry`` (where ``make demo`` leaves them)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    keep_alive_s: int = Field(
        default=DEFAULT_KEEP_ALIVE_S,
        ge=1,
        le=3600,
        description="An idle keep-alive connection is closed after this many seconds. Keep it above the idle "
        "timeout of the clients' pools and of any proxy in front (nginx 60 s, cloud load balancers 60 s): a server "
        "that closes first races the client's next request on that connection, which then fails",
    )
    tokens_file: Path | None = Field(
        default=None, description="JSON file of hashed tokens (autopilot tokens issue); None: data_dir/tokens.json"
    )
    simulated_operators: bool = Field(
        default=False, description="Run the sandbox's simulated operator pool (it answers every deferral)"
    )
    sandbox_cases: int = Field(default=0, ge=0, description="Open this many sandbox cases at start (demo, tests)")
    audit_window_h: float = Field(
        default=24.0, gt=0, description="Audited acceptance and realised error per slice over this many hours"
    )
    inbox_poll_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Live inboxes re-read the store this often even without an event (they are woken by events)",
    )
    # Limits at the edge (service.api.limits); over one: 413 (body) or 422 naming the field and the limit.
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="The largest request body accepted")
    max_chat_messages: int = Field(default=200, ge=1, description="Chat messages of a state sent by a client")
    max_controls: int = Field(default=200, ge=1, description="Controls on the screen of a state sent by a client")
    max_prompt_chars: int = Field(
        default=200_000, ge=1000, description="Characters of chat, field values and panels of a state sent by a client"
    )
    issued_proposals_h: float = Field(
        default=24.0, gt=0, description="Copilot feedback is accepted for a suggestion issued this many hours ago"
    )
    plots_dir: Path | None = Field(
        default=None, description="The champion critic's report plots; None: data_dir/critic_report"
    )

    @field_validator("tokens_file", "plots_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def resolved_policy_dir(self) -> Path:
        return self.policy_dir or self.data_dir / "policy"

    def resolved_registry_dir(self) -> Path:
        return self.registry_dir or self.data_dir / "registry"

    def resolved_tokens_file(self) -> Path:
        return self.tokens_file or self.data_dir / "tokens.json"

    def resolved_plots_dir(self) -> Path:
        return self.plots_dir or self.data_dir / "critic_report"
