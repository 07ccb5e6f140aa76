"""Export the JSON Schema of every payload so producers in other languages can validate against them."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, TypeAdapter

from schemas.actions import Action
from schemas.decision import Decision, Deferral, OperatorDecision
from schemas.feedback import FeedbackRecord
from schemas.files import atomic_write_text
from schemas.proposal import Proposal
from schemas.qa import QAAnswer, QAItem
from schemas.risk import RiskPolicy
from schemas.screen import ScreenSchema
from schemas.session import SessionCommand
from schemas.state import UIState
from schemas.trace import Trace, TraceStep

EXPORTED: dict[str, type[BaseModel]] = {
    "ScreenSchema": ScreenSchema,
    "UIState": UIState,
    "RiskPolicy": RiskPolicy,
    "Proposal": Proposal,
    "Decision": Decision,
    "Deferral": Deferral,
    "OperatorDecision": OperatorDecision,
    "FeedbackRecord": FeedbackRecord,
    "TraceStep": TraceStep,
    "Trace": Trace,
    "SessionCommand": SessionCommand,
    "QAItem": QAItem,
    "QAAnswer": QAAnswer,
}


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one ``<Name>.schema.json`` per payload (plus ``Action``) into ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    schemas: dict[str, dict[str, object]] = {name: model.model_json_schema() for name, model in EXPORTED.items()}
    schemas["Action"] = TypeAdapter(Action).json_schema()
    for name, schema in schemas.items():
        path = directory / f"{name}.schema.json"
        atomic_write_text(path, json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
