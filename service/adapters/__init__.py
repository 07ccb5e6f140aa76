"""BPM adapters: the contract the runtime drives a case through (``BpmAdapter``) and its implementations.

``SandboxAdapter`` drives the sandbox platform in the same process; ``HttpBpmAdapter`` drives the sandbox's REST
task API (or any BPM exposing the same API) over HTTP.
"""

from service.adapters.base import (
    AdapterError,
    BpmAdapter,
    BpmUnavailableError,
    CaseEndedError,
    CaseNotFoundError,
    CaseOutcome,
    CaseStatus,
    InvalidActionError,
    StaleStateError,
)
from service.adapters.http import HttpBpmAdapter
from service.adapters.sandbox_inprocess import HandlingClock, SandboxAdapter, operator_clock

__all__ = [
    "AdapterError",
    "BpmAdapter",
    "BpmUnavailableError",
    "CaseEndedError",
    "CaseNotFoundError",
    "CaseOutcome",
    "CaseStatus",
    "HandlingClock",
    "HttpBpmAdapter",
    "InvalidActionError",
    "SandboxAdapter",
    "StaleStateError",
    "operator_clock",
]
