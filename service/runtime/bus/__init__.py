"""The Kafka bus of the runtime: an embedded broker, topic names, the message envelope, producer and consumer.

JSON payloads keyed by session id (so one session's messages stay in order on one partition), with schema
version, payload type and message id in headers. See docs/runtime.md (Topics, and the broker's quirks).
"""

from service.runtime.bus.broker import BrokerStartError, EmbeddedBroker, LocalS3, free_port
from service.runtime.bus.consumer import BusConsumer, ConsumerStats, MessageMeta
from service.runtime.bus.envelope import PoisonMessage, decode, encode
from service.runtime.bus.producer import BusProducer, Published, PublishError
from service.runtime.bus.topics import EnsureResult, TopicMismatch, Topics, UnknownTopic, ensure_topics, parked_topic

__all__ = [
    "BrokerStartError",
    "BusConsumer",
    "BusProducer",
    "ConsumerStats",
    "EmbeddedBroker",
    "EnsureResult",
    "LocalS3",
    "MessageMeta",
    "PoisonMessage",
    "PublishError",
    "Published",
    "TopicMismatch",
    "Topics",
    "UnknownTopic",
    "decode",
    "encode",
    "ensure_topics",
    "free_port",
    "parked_topic",
]
