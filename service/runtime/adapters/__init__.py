"""BPM adapters: the contract the runtime drives a case through (``BpmAdapter``) and its implementation over a
BPM's REST task API (``HttpBpmAdapter``). The sandbox's in-process adapter lives with the sandbox
(``sandbox.adapter``)."""

from service.runtime.adapters.base import (
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
from service.runtime.adapters.http import HttpBpmAdapter

__all__ = [
    "AdapterError",
    "BpmAdapter",
    "BpmUnavailableError",
    "CaseEndedError",
    "CaseNotFoundError",
    "CaseOutcome",
    "CaseStatus",
    "HttpBpmAdapter",
    "InvalidActionError",
    "StaleStateError",
]
