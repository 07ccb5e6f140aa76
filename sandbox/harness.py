"""The runtime over the sandbox: the product's ``Runtime`` driving the in-process sandbox platform, plus the
simulated operator pool answering its deferrals over Kafka and the simulated QA reviewers reviewing its executed
audited steps after the fact (the demo, the benches and the tests use it).

Background actions cost no operator time (``no_operator_time``); the operator pool charges what a simulated human
actually does to the same adapter's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from critic.thresholds import SliceThresholds
from sandbox.adapter import SandboxAdapter
from sandbox.journal import PlatformJournal
from sandbox.operator_pool import OPERATOR_GROUP, SimulatedOperatorPool
from sandbox.operators import SimOperator, operator_pool
from sandbox.platform import SandboxPlatform
from sandbox.qa_reviewers import QA_REVIEWER_GROUP, SimulatedQAReviewers, SnapshottingAdapter
from sandbox.risk import DEFAULT_RISK_POLICY
from schemas.actions import Action
from schemas.risk import RiskPolicy
from service.api.settings import ServiceSettings
from service.runtime.autonomy import AutonomyStages
from service.runtime.champion import AcceptanceCritic, Champion
from service.runtime.inprocess import Runtime
from service.runtime.metrics import RuntimeMetrics
from service.runtime.settings import RuntimeSettings
from service.runtime.worker import ProposalPolicy


def no_operator_time(action: Action, new_customer_messages: int) -> float:
    """The runtime's adapter clock: an action executed in the background costs no operator time. Operator time
    is charged by the operator side (``SimulatedOperatorPool``) for what a human actually does."""
    return 0.0


class SandboxRuntime(Runtime):
    """``Runtime`` over one sandbox platform with the sandbox's risk file and (unless ``with_operators`` is off)
    its simulated operators. ``adapter`` replaces the in-process adapter (e.g. the HTTP task API)."""

    def __init__(
        self,
        platform: SandboxPlatform,
        policy: ProposalPolicy,
        critic: AcceptanceCritic,
        thresholds: SliceThresholds,
        settings: RuntimeSettings | None = None,
        *,
        critic_version: str | None = None,
        risk: RiskPolicy = DEFAULT_RISK_POLICY,
        stages: AutonomyStages | None = None,
        operators: Sequence[SimOperator] | None = None,
        with_operators: bool = True,
        queue_for: Callable[[str], str] = str,
        adapter: SandboxAdapter | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        # One time account: workers apply through it (background actions cost nothing), operators charge it. It
        # keeps what each case looked like before every action, for the after-the-fact reviewers.
        self.sandbox_adapter = adapter if adapter is not None else SnapshottingAdapter(platform, clock=no_operator_time)
        super().__init__(
            self.sandbox_adapter,
            policy,
            critic,
            thresholds,
            settings,
            critic_version=critic_version,
            risk=risk,
            stages=stages,
            queue_for=queue_for,
            metrics=metrics,
        )
        self.platform = platform
        self.operators = (
            list(operators)
            if operators is not None
            else operator_pool(self.settings.operators, self.settings.seed, platform.scenario.world)
        )
        self.with_operators = with_operators
        self.pool: SimulatedOperatorPool | None = None
        self.qa_reviewers: SimulatedQAReviewers | None = None

    def _start_extras(self) -> None:
        if not self.with_operators:
            return
        assert self.producer is not None and self.store is not None
        settings = self.settings
        self.pool = SimulatedOperatorPool(
            self.platform,
            self.operators,
            self.producer,
            self.topics,
            self.bootstrap,
            settings.seed,
            self.store,
            settings.think_time_s,
            adapter=self.sandbox_adapter,
            group=self.topics.prefix + OPERATOR_GROUP,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            idle_fetch_max_wait_ms=settings.idle_fetch_max_wait_ms,
        )
        self.run_thread("operator-pool", self.pool.run)
        if isinstance(self.sandbox_adapter, SnapshottingAdapter):
            self.qa_reviewers = SimulatedQAReviewers(
                self.sandbox_adapter,
                self.operators,
                self.producer,
                self.topics,
                self.bootstrap,
                settings.seed,
                group=self.topics.prefix + QA_REVIEWER_GROUP,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=settings.heartbeat_interval_ms,
                fetch_max_wait_ms=settings.fetch_max_wait_ms,
            )
            self.run_thread("qa-reviewers", self.qa_reviewers.run)

    def _stop_extras(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.qa_reviewers is not None:
            self.qa_reviewers.close()

    def _extra_stats(self) -> dict[str, Any]:
        return {
            "operators": self.pool.stats() if self.pool is not None else None,
            "qa_reviewers": self.qa_reviewers.stats() if self.qa_reviewers is not None else None,
        }


def service_runtime(
    settings: ServiceSettings,
    policy: ProposalPolicy,
    champion: Champion,
    stages: AutonomyStages,
    metrics: RuntimeMetrics,
) -> Runtime:
    """The API's runtime over an embedded sandbox (``autopilot serve --sandbox``, the demo's service): a platform
    with ``settings.sandbox_cases`` open cases and, with ``settings.simulated_operators``, its operator pool.

    The platform's cases persist beside the store (``DATA_DIR/sandbox.db``, ``sandbox.journal``): a restart on
    the same data directory brings back every case as it was, so sessions and deferrals parked before it still
    apply; only missing cases are opened to reach ``sandbox_cases``."""
    platform = SandboxPlatform(seed=settings.seed)
    platform.attach_journal(PlatformJournal(settings.data_dir / "sandbox.db", settings.seed))
    for _ in range(max(0, settings.sandbox_cases - len(platform.cases))):
        platform.open_case()
    return SandboxRuntime(
        platform,
        policy,
        champion.critic,
        champion.thresholds,
        settings,
        critic_version=champion.version,
        stages=stages,
        with_operators=settings.simulated_operators,
        metrics=metrics,
    )
