"""Topic names of the runtime and their explicit creation.

Tansu creates a topic on the first produce or subscribe to it (it ignores the clients' "do not auto-create" flag),
with its own default partition count. Our code paths therefore always create topics here first, and the producer
and consumer refuse topics that do not exist (see ``missing_topics``).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

with warnings.catch_warnings():
    # kafka-python 3.0.12 emits a DeprecationWarning on import under Python 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

PARKED_SUFFIX = ".parked"
_LEGAL = re.compile(r"^[A-Za-z0-9._-]*$")


def parked_topic(topic: str) -> str:
    """The poison-message topic of ``topic``: where messages that can never be processed are kept for a human."""
    return topic + PARKED_SUFFIX


@dataclass(frozen=True)
class Topics:
    """The runtime's topics under one prefix (one prefix per deployment or test keeps them apart)."""

    prefix: str = "autopilot."

    def __post_init__(self) -> None:
        if not _LEGAL.match(self.prefix):
            raise ValueError(f"prefix: {self.prefix!r} has characters Kafka does not allow in topic names")
        if len(self.prefix) > 200:
            raise ValueError("prefix: longer than 200 characters (Kafka topic names end at 249)")

    @property
    def sessions(self) -> str:
        return self.prefix + "sessions"

    @property
    def deferrals(self) -> str:
        return self.prefix + "deferrals"

    @property
    def operator_decisions(self) -> str:
        return self.prefix + "operator-decisions"

    @property
    def feedback(self) -> str:
        return self.prefix + "feedback"

    @property
    def decisions(self) -> str:
        return self.prefix + "decisions"

    @property
    def qa(self) -> str:
        """Executed steps sampled for an after-the-fact review (``QAItem``), for the operator side."""
        return self.prefix + "qa"

    @property
    def qa_answers(self) -> str:
        """Reviews of QA items (``QAAnswer``) from an operator gateway, for the workers to record."""
        return self.prefix + "qa-answers"

    def parked(self, topic: str) -> str:
        return parked_topic(topic)

    def main(self) -> list[str]:
        """The topics that carry payloads."""
        return [
            self.sessions,
            self.deferrals,
            self.operator_decisions,
            self.feedback,
            self.decisions,
            self.qa,
            self.qa_answers,
        ]

    def all(self) -> list[str]:
        """Every topic, the parked one of each included."""
        main = self.main()
        return main + [parked_topic(name) for name in main]


@dataclass
class EnsureResult:
    """What ``ensure_topics`` found: created now, already there, and those with another partition count."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    # topic -> (wanted partitions, actual partitions): keyed routing depends on the count, so this matters.
    mismatched: dict[str, tuple[int, int]] = field(default_factory=dict)


class UnknownTopic(ValueError):
    """The topic does not exist. Tansu would create it with its own partition count: run ensure_topics first."""


class TopicMismatch(ValueError):
    """An existing topic has another partition count than asked for."""


def _admin(bootstrap: str, timeout_ms: int) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="autopilot-admin", request_timeout_ms=timeout_ms)


def partition_counts(bootstrap: str, names: Iterable[str], timeout_ms: int = 10_000) -> dict[str, int]:
    """Partition count of each named topic that exists (a missing one is left out). Never creates topics."""
    wanted = list(names)
    if not wanted:
        return {}
    admin = _admin(bootstrap, timeout_ms)
    try:
        # The admin client's metadata request says "do not auto-create", which Tansu honours (its producer and
        # consumer requests are not honoured).
        described = admin.describe_topics(wanted)
    finally:
        admin.close()
    return {t["name"]: len(t["partitions"]) for t in described if t["error_code"] == 0 and t["partitions"]}


def missing_topics(bootstrap: str, names: Iterable[str], timeout_ms: int = 10_000) -> list[str]:
    """The named topics that do not exist, in the order given."""
    wanted = list(dict.fromkeys(names))
    present = partition_counts(bootstrap, wanted, timeout_ms)
    return [name for name in wanted if name not in present]


def ensure_topics(
    bootstrap: str,
    topics: Topics | Iterable[str],
    partitions: int,
    replication: int = 1,
    *,
    strict: bool = False,
    timeout_ms: int = 10_000,
) -> EnsureResult:
    """Create the topics that do not exist yet; idempotent. A ``Topics`` means all of them, parked ones included.

    An existing topic with another partition count is reported (logged and in the result) rather than changed:
    repartitioning moves sessions between workers and is an operator's decision. ``strict`` raises instead.
    """
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions: must be a positive integer, got {partitions!r}")
    if isinstance(replication, bool) or not isinstance(replication, int) or replication < 1:
        raise ValueError(f"replication: must be a positive integer, got {replication!r}")
    if isinstance(topics, str):
        raise ValueError("topics: expected a Topics or a list of names, got a single string")
    names = topics.all() if isinstance(topics, Topics) else list(dict.fromkeys(topics))
    for name in names:
        if not name or not _LEGAL.match(name) or len(name) > 249:
            raise ValueError(f"topics: {name!r} is not a legal Kafka topic name")
    result = EnsureResult()
    if not names:
        return result
    admin = _admin(bootstrap, timeout_ms)
    try:
        present = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names) if t["error_code"] == 0}
        to_create = [name for name in names if name not in present]
        if to_create:
            response = admin.create_topics(
                {name: {"num_partitions": partitions, "replication_factor": replication} for name in to_create},
                timeout_ms=timeout_ms,
                raise_errors=False,
            )
            for item in response["topics"]:
                if item["error_code"] == 0:
                    result.created.append(item["name"])
                elif item["error_code"] == TopicAlreadyExistsError.errno:
                    # Another process created it between our describe and create: fine, check it below.
                    pass
                else:
                    raise RuntimeError(
                        f"creating topic {item['name']!r} failed: error {item['error_code']} {item['error_message']}"
                    )
        actual = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names) if t["error_code"] == 0}
    finally:
        admin.close()
    for name in names:
        if name not in actual:
            raise RuntimeError(f"topic {name!r} does not exist after creating it")
        if name not in result.created:
            result.existing.append(name)
        if actual[name] != partitions:
            result.mismatched[name] = (partitions, actual[name])
    if result.mismatched:
        detail = ", ".join(f"{n}: wanted {w}, has {a}" for n, (w, a) in result.mismatched.items())
        if strict:
            raise TopicMismatch(f"partitions: existing topics differ ({detail})")
        log.warning("topics with another partition count than asked for (left as they are): %s", detail)
    return result
