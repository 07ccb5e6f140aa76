"""What the policy's learned readers share: the pending requests (``policy.requests``), the option cues
(``policy.option_cues``), the record check (``policy.record_check``), the preconditions
(``policy.preconditions``) and the open choices (``policy.open_choices``) are each a dataclass with its
hyper-parameters as fields and its learned state in fields ending in ``_`` (the estimator convention), saved in
``policy.json`` as one JSON object.

The saved keys are the field names without the trailing ``_``; a key missing from an older file leaves the
field at its default, so a policy saved before a hyper-parameter existed still loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self


def process_key(process_id: str, name: str) -> str:
    """The key a reader keeps what it learned per process under: ``process\x1fname`` (a control, an action)."""
    return f"{process_id}\x1f{name}"


class Reader:
    """Mixin for a reader dataclass: ``to_dict`` and ``from_dict`` over its fields (see the module docstring)."""

    def to_dict(self) -> dict[str, object]:
        return {f.name.rstrip("_"): getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        return cls(**{f.name: data[f.name.rstrip("_")] for f in fields if f.init and f.name.rstrip("_") in data})
