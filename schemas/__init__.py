"""The contracts of bpm-autopilot: pydantic v2 models shared by every other package.

Imports nothing of the project. Every payload carries a ``schema_version``.
"""

from schemas.actions import (
    Action,
    ActionType,
    ActionValidationError,
    ClickControl,
    CloseChat,
    FillField,
    SelectOption,
    SendTextToChat,
    ToggleCheckbox,
    TransferChat,
    action_key,
    parse_action,
    validate_action,
)
from schemas.base import SCHEMA_VERSION, Payload
from schemas.decision import Decision, DecisionOutcome, Deferral, OperatorDecision, RejectReason, Verdict
from schemas.feedback import FeedbackRecord, FeedbackSource
from schemas.proposal import Proposal, ProposalFeatures, ScoredAction
from schemas.qa import QAAnswer, QAItem, QALabel, qa_label
from schemas.risk import AutonomyStage, RiskPolicy, RiskTier, SliceKey
from schemas.screen import (
    ButtonControl,
    ChatControl,
    CheckboxControl,
    Control,
    ControlKind,
    DateControl,
    LinkControl,
    NumberControl,
    ScreenSchema,
    SelectControl,
    TableControl,
    TextareaControl,
    TextControl,
    ToolControl,
)
from schemas.session import SessionCommand, SessionCommandKind
from schemas.state import ChatMessage, ChatRole, Panel, UIState
from schemas.trace import Trace, TraceSource, TraceStep

__all__ = [
    "SCHEMA_VERSION",
    "Action",
    "ActionType",
    "ActionValidationError",
    "AutonomyStage",
    "ButtonControl",
    "ChatControl",
    "ChatMessage",
    "ChatRole",
    "CheckboxControl",
    "ClickControl",
    "CloseChat",
    "Control",
    "ControlKind",
    "DateControl",
    "Decision",
    "DecisionOutcome",
    "Deferral",
    "FeedbackRecord",
    "FeedbackSource",
    "FillField",
    "LinkControl",
    "NumberControl",
    "OperatorDecision",
    "Panel",
    "Payload",
    "Proposal",
    "ProposalFeatures",
    "QAAnswer",
    "QAItem",
    "QALabel",
    "RejectReason",
    "RiskPolicy",
    "RiskTier",
    "ScoredAction",
    "ScreenSchema",
    "SelectControl",
    "SelectOption",
    "SendTextToChat",
    "SessionCommand",
    "SessionCommandKind",
    "SliceKey",
    "TableControl",
    "TextControl",
    "TextareaControl",
    "ToggleCheckbox",
    "ToolControl",
    "Trace",
    "TraceSource",
    "TraceStep",
    "TransferChat",
    "UIState",
    "Verdict",
    "action_key",
    "parse_action",
    "qa_label",
    "validate_action",
]
