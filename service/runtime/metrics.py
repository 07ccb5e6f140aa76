"""Prometheus metrics of the runtime and the service (every name starts with ``autopilot_``).

Two kinds:

- **Events**, counted where they happen: decisions (by process, action type and outcome), decision latency
  (observe -> decision) and proposal latency. ``RuntimeMetrics`` holds them; a worker and the API's copilot
  route call ``observe_decision`` / ``observe_proposals``.
- **State**, read at scrape time by ``StateCollector`` from the store and the autonomy stages: sessions by state,
  the automated-session ratio, deferral queue depth and age, per-slice stage, audited acceptance and realised
  error, the champion critic's version, the Kafka consumer lag of in-process consumers, the kill switch. Read at
  scrape time so a counter never drifts from the truth (several API replicas read the same store).

Each ``RuntimeMetrics`` owns its ``CollectorRegistry`` (with the process and platform collectors), so two
services in one test process never clash on a global registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from schemas.decision import Decision
from schemas.risk import AutonomyStage

log = logging.getLogger(__name__)

# Decision latency with the small default policy is tens of ms per batch; a large model on a GPU is slower.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_VALUE = {AutonomyStage.LOGGING: 0, AutonomyStage.COPILOT: 1, AutonomyStage.AUTOPILOT: 2}

# Every metric the service exports (checked against a live /metrics by the tests and the Grafana dashboard check).
METRIC_NAMES = (
    "autopilot_decisions_total",
    "autopilot_decision_latency_seconds",
    "autopilot_proposal_latency_seconds",
    "autopilot_feedback_total",
    "autopilot_answers_total",
    "autopilot_sessions",
    "autopilot_automated_session_ratio",
    "autopilot_deferral_queue_depth",
    "autopilot_deferral_queue_age_seconds",
    "autopilot_slice_stage",
    "autopilot_slice_audited_acceptance",
    "autopilot_slice_realised_error",
    "autopilot_slice_audits",
    "autopilot_critic_info",
    "autopilot_kafka_consumer_lag",
    "autopilot_kill_switch",
    "autopilot_stage_changes_total",
    "autopilot_session_blockers_total",
    "autopilot_qa_reviews_total",
    "autopilot_qa_pending",
)


class RuntimeMetrics:
    """The event metrics, on a registry of their own (plus process and platform metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None, process_metrics: bool = True) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.decisions = Counter(
            "autopilot_decisions",
            "Router decisions by process, action type and outcome (source: worker or copilot).",
            ["process", "action_type", "outcome", "source"],
            registry=self.registry,
        )
        self.decision_latency = Histogram(
            "autopilot_decision_latency_seconds",
            "Observe -> decision per step (policy, critic and router).",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.proposal_latency = Histogram(
            "autopilot_proposal_latency_seconds",
            "One propose_batch call of the policy.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.feedback = Counter(
            "autopilot_feedback",
            "Copilot feedback recorded through the API, by process, action type and verdict.",
            ["process", "action_type", "verdict"],
            registry=self.registry,
        )
        self.answers = Counter(
            "autopilot_answers",
            "Operator answers to deferrals through the API, by result (accepted, duplicate, stale, unknown).",
            ["result"],
            registry=self.registry,
        )
        self.blockers = Counter(
            "autopilot_session_blockers",
            "Sessions by the first thing that made them need a human: kind (deferral, always_ask, blocked, hand_over, "
            "failed, stopped), the router or hand-over rule, and the slice (action_type * for a hand-over).",
            ["kind", "rule", "process", "action_type"],
            registry=self.registry,
        )
        self.qa_reviews = Counter(
            "autopilot_qa_reviews",
            "After-the-fact reviews of executed steps recorded, by label (acceptable, unacceptable, excluded).",
            ["label"],
            registry=self.registry,
        )
        self.stage_changes = Counter(
            "autopilot_stage_changes",
            "Stage changes made through the supervisor API, by direction (promote, demote, pin, unpin).",
            ["direction"],
            registry=self.registry,
        )

    def observe_decision(self, decision: Decision, latency_s: float | None, source: str = "worker") -> None:
        self.decisions.labels(
            decision.slice.process_id, decision.slice.action_type.value, decision.outcome.value, source
        ).inc()
        if latency_s is not None:
            self.decision_latency.labels(source).observe(latency_s)

    def observe_proposals(self, latency_s: float, source: str = "worker") -> None:
        self.proposal_latency.labels(source).observe(latency_s)

    def observe_blocker(self, kind: str, rule: str, process_id: str, action_type: str) -> None:
        """A session needed a human for the first time; see ``service.runtime.blockers``."""
        self.blockers.labels(kind, rule, process_id, action_type).inc()

    def observe_qa_review(self, label: str) -> None:
        self.qa_reviews.labels(label).inc()


@dataclass(frozen=True, slots=True)
class SliceGauge:
    process_id: str
    action_type: str
    stage: AutonomyStage
    audits_accepted: int
    audits_total: int


@dataclass
class StateSources:
    """Callables the collector reads at scrape time; each may raise (that family is skipped and logged)."""

    sessions_by_status: Callable[[], Mapping[str, int]]
    automated_ratio: Callable[[], float | None]
    queues: Callable[[], Mapping[str, tuple[int, float]]]
    slices: Callable[[], Sequence[SliceGauge]]
    critic_version: Callable[[], str | None]
    consumer_lag: Callable[[], Mapping[str, int]] = field(default=lambda: {})
    kill_switch: Callable[[], bool] = field(default=lambda: False)
    qa_pending: Callable[[], Mapping[str, int]] = field(default=lambda: {})


class StateCollector(Collector):
    """Gauges read from the store and the stages at scrape time."""

    def __init__(self, sources: StateSources) -> None:
        self.sources = sources

    def describe(self) -> list[Metric]:
        return []  # collected lazily: describing would read the store at registration time

    def collect(self) -> Iterator[Metric]:
        for build in (
            self._sessions,
            self._automated,
            self._queues,
            self._slices,
            self._critic,
            self._lag,
            self._kill,
            self._qa,
        ):
            try:
                yield from build()
            except Exception:  # a scrape must not fail because one source did; the family is missing instead
                log.exception("metrics: collecting %s failed", build.__name__)

    def _sessions(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("autopilot_sessions", "Background sessions by state.", labels=["state"])
        for status, count in sorted(self.sources.sessions_by_status().items()):
            family.add_metric([status], count)
        yield family

    def _automated(self) -> Iterator[Metric]:
        ratio = self.sources.automated_ratio()
        family = GaugeMetricFamily(
            "autopilot_automated_session_ratio",
            "Share of completed sessions that ran without any human step (NaN before the first one).",
        )
        family.add_metric([], float("nan") if ratio is None else ratio)
        yield family

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("autopilot_deferral_queue_depth", "Pending deferrals per queue.", labels=["queue"])
        age = GaugeMetricFamily(
            "autopilot_deferral_queue_age_seconds", "Age of the oldest pending deferral per queue.", labels=["queue"]
        )
        for queue, (count, oldest) in sorted(self.sources.queues().items()):
            depth.add_metric([queue], count)
            age.add_metric([queue], oldest)
        yield depth
        yield age

    def _slices(self) -> Iterator[Metric]:
        labels = ["process", "action_type"]
        stage = GaugeMetricFamily(
            "autopilot_slice_stage", "Autonomy stage per slice: 0 logging, 1 copilot, 2 autopilot.", labels=labels
        )
        acceptance = GaugeMetricFamily(
            "autopilot_slice_audited_acceptance",
            "Share of audited would-execute steps a human accepted (store, last AUTOPILOT_AUDIT_WINDOW_H hours).",
            labels=labels,
        )
        error = GaugeMetricFamily(
            "autopilot_slice_realised_error",
            "1 - audited acceptance: the estimated error rate of auto-executed steps (compare with alpha).",
            labels=labels,
        )
        audits = GaugeMetricFamily(
            "autopilot_slice_audits",
            "Audited steps answered per slice (last AUTOPILOT_AUDIT_WINDOW_H hours).",
            labels=labels,
        )
        for item in self.sources.slices():
            key = [item.process_id, item.action_type]
            stage.add_metric(key, STAGE_VALUE[item.stage])
            audits.add_metric(key, item.audits_total)
            if item.audits_total:
                share = item.audits_accepted / item.audits_total
                acceptance.add_metric(key, share)
                error.add_metric(key, 1.0 - share)
        yield from (stage, acceptance, error, audits)

    def _critic(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "autopilot_critic_info", "The champion critic in use (value 1; its version as a label).", labels=["version"]
        )
        family.add_metric([self.sources.critic_version() or "none"], 1.0)
        yield family

    def _lag(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "autopilot_kafka_consumer_lag",
            "Records not yet processed and committed, per consumer group, from fetch highwater marks (not the "
            "broker's ListOffsets(latest), which Tansu answers wrongly).",
            labels=["group"],
        )
        for group, lag in sorted(self.sources.consumer_lag().items()):
            family.add_metric([group], lag)
        yield family

    def _kill(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("autopilot_kill_switch", "1 while the global kill switch is on.")
        family.add_metric([], 1.0 if self.sources.kill_switch() else 0.0)
        yield family

    def _qa(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "autopilot_qa_pending", "Executed steps waiting for an after-the-fact review, per queue.", labels=["queue"]
        )
        for queue, count in sorted(self.sources.qa_pending().items()):
            family.add_metric([queue], count)
        yield family


class LagCollector(Collector):
    """``autopilot_kafka_consumer_lag`` alone, for a process without a store view (``autopilot worker``)."""

    def __init__(self, lag: Callable[[], Mapping[str, int]]) -> None:
        self.lag = lag

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "autopilot_kafka_consumer_lag",
            "Records not yet processed and committed, per consumer group, from fetch highwater marks.",
            labels=["group"],
        )
        try:
            for group, lag in sorted(self.lag().items()):
                family.add_metric([group], lag)
        except Exception:
            log.exception("metrics: reading the consumer lag failed")
        yield family
