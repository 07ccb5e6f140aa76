"""Hypothesis strategies for the contracts in ``schemas/``: valid screens, states, actions and every payload.

Import as ``tests.schemas.strategies``. Every strategy yields objects that already passed pydantic validation, so
other suites can use them as fixtures. Sizes are kept small so that properties stay fast.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from functools import cache
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from schemas import (
    Action,
    ActionType,
    AutonomyStage,
    ButtonControl,
    ChatControl,
    ChatMessage,
    ChatRole,
    CheckboxControl,
    ClickControl,
    CloseChat,
    Control,
    ControlKind,
    DateControl,
    Decision,
    DecisionOutcome,
    Deferral,
    FeedbackRecord,
    FeedbackSource,
    FillField,
    LinkControl,
    NumberControl,
    OperatorDecision,
    Panel,
    Proposal,
    ProposalFeatures,
    QAAnswer,
    QAItem,
    RejectReason,
    RiskPolicy,
    RiskTier,
    ScoredAction,
    ScreenSchema,
    SelectControl,
    SelectOption,
    SendTextToChat,
    SliceKey,
    TableControl,
    TextareaControl,
    TextControl,
    ToggleCheckbox,
    ToolControl,
    Trace,
    TraceSource,
    TraceStep,
    TransferChat,
    UIState,
    Verdict,
)
from schemas.risk import RiskOverride
from schemas.session import SessionCommand, SessionCommandKind

# Text patterns a TextControl may carry, each with the longest string it can match (None: no pattern).
TEXT_PATTERNS: list[tuple[str | None, int]] = [
    (None, 0),
    (r"[0-9]{4}", 4),
    (r"[A-Z]{2}-[0-9]{1,6}", 9),
    (r"[a-z]{1,10}", 10),
    (r"(yes|no)", 3),
]

ID_ALPHABET = string.ascii_letters + string.digits + "_.:-"  # the id pattern of schemas.screen


@cache
def ids() -> st.SearchStrategy[str]:
    """Identifiers matching the schemas' id pattern (controls, screens, processes, panels)."""
    return st.text(alphabet=ID_ALPHABET, min_size=1, max_size=16)


@cache
def short_text(min_size: int = 0, max_size: int = 24) -> st.SearchStrategy[str]:
    return st.text(min_size=min_size, max_size=max_size)


def nonempty_text(max_size: int = 24) -> st.SearchStrategy[str]:
    return short_text(min_size=1, max_size=max_size)


@cache
def finite_floats(min_value: float | None = None, max_value: float | None = None) -> st.SearchStrategy[float]:
    return st.floats(min_value=min_value, max_value=max_value, allow_nan=False, allow_infinity=False)


def unit_floats() -> st.SearchStrategy[float]:
    return finite_floats(0.0, 1.0)


@cache
def datetimes() -> st.SearchStrategy[datetime]:
    """Naive, UTC and fixed-offset datetimes (all survive a JSON round trip)."""
    offsets = st.integers(min_value=-12 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
    zones: st.SearchStrategy[Any] = st.none() | st.just(UTC) | offsets
    return st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=zones)


@cache
def json_values() -> st.SearchStrategy[Any]:
    """JSON-compatible values (for Trace.attributes / ground_truth)."""
    scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite_floats() | short_text()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )


@cache
def enums(enum: type[Enum]) -> st.SearchStrategy[Any]:
    """Any member of an enum (cached)."""
    return st.sampled_from(list(enum))


@cache
def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@cache
def lists_of(strategy: st.SearchStrategy[Any], max_size: int) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, max_size=max_size)


@cache
def json_dicts() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(short_text(max_size=8), json_values(), max_size=3)


# --- controls and screens -------------------------------------------------------------------------------------

CONTROL_MODELS: dict[ControlKind, type[BaseModel]] = {
    ControlKind.TEXT: TextControl,
    ControlKind.NUMBER: NumberControl,
    ControlKind.DATE: DateControl,
    ControlKind.SELECT: SelectControl,
    ControlKind.CHECKBOX: CheckboxControl,
    ControlKind.TEXTAREA: TextareaControl,
    ControlKind.BUTTON: ButtonControl,
    ControlKind.LINK: LinkControl,
    ControlKind.TOOL: ToolControl,
    ControlKind.TABLE: TableControl,
    ControlKind.CHAT: ChatControl,
}


_PATTERNS = st.sampled_from(TEXT_PATTERNS)
_MAX_LENGTHS = {longest: st.integers(min_value=max(1, longest), max_value=200) for _, longest in TEXT_PATTERNS}
_BOUNDS = st.none() | finite_floats(-1e6, 1e6)


@st.composite
def _text_fields(draw: st.DrawFn) -> dict[str, Any]:
    pattern, longest = draw(_PATTERNS)
    return {"pattern": pattern, "max_length": draw(_MAX_LENGTHS[longest])}


@st.composite
def _number_fields(draw: st.DrawFn) -> dict[str, Any]:
    minimum, maximum = draw(_BOUNDS), draw(_BOUNDS)
    if minimum is not None and maximum is not None and minimum > maximum:
        minimum, maximum = maximum, minimum
    return {"minimum": minimum, "maximum": maximum}


_EMPTY: st.SearchStrategy[dict[str, Any]] = st.just({})
_KIND_FIELDS: dict[ControlKind, st.SearchStrategy[dict[str, Any]]] = {
    ControlKind.TEXT: _text_fields(),
    ControlKind.NUMBER: _number_fields(),
    ControlKind.DATE: _EMPTY,
    ControlKind.SELECT: st.fixed_dictionaries(
        {"options": st.lists(nonempty_text(max_size=12), min_size=1, max_size=5, unique=True)}
    ),
    ControlKind.CHECKBOX: _EMPTY,
    ControlKind.TEXTAREA: st.fixed_dictionaries({"max_length": st.integers(1, 3000)}),
    ControlKind.BUTTON: st.fixed_dictionaries({"submits": st.booleans()}),
    ControlKind.LINK: _EMPTY,
    ControlKind.TOOL: st.fixed_dictionaries({"result_panel": ids()}),
    ControlKind.TABLE: st.fixed_dictionaries({"columns": st.lists(short_text(max_size=10), max_size=4)}),
    ControlKind.CHAT: _EMPTY,
}
_COMMON_FIELDS = st.fixed_dictionaries({"label": short_text(), "required": st.booleans(), "enabled": st.booleans()})
_KIND_AND_FIELDS = st.one_of(
    *(
        st.tuples(st.just(kind), fields, _COMMON_FIELDS).map(lambda t: (t[0], {**t[1], **t[2]}))
        for kind, fields in _KIND_FIELDS.items()
    )
)


def _make_control(kind: ControlKind, control_id: str, fields: dict[str, Any]) -> Control:
    control: Control = CONTROL_MODELS[kind](id=control_id, **fields)  # type: ignore[assignment]
    return control


def controls_of_kind(kind: ControlKind, control_id: str) -> st.SearchStrategy[Control]:
    """A valid control of ``kind`` with id ``control_id`` (random label / required / enabled)."""
    return st.tuples(_KIND_FIELDS[kind], _COMMON_FIELDS).map(
        lambda t: _make_control(kind, control_id, {**t[0], **t[1]})
    )


def controls(control_id: str) -> st.SearchStrategy[Control]:
    """A control of any kind with the given id."""
    return _KIND_AND_FIELDS.map(lambda kf: _make_control(kf[0], control_id, kf[1]))


@st.composite
def control_lists(draw: st.DrawFn, max_size: int = 8) -> list[Control]:
    """Controls of random kinds with unique ids."""
    control_ids = draw(st.lists(ids(), unique=True, max_size=max_size))
    return [_make_control(*_swap(draw(_KIND_AND_FIELDS), cid)) for cid in control_ids]


def _swap(kind_fields: tuple[ControlKind, dict[str, Any]], control_id: str) -> tuple[ControlKind, str, dict[str, Any]]:
    return kind_fields[0], control_id, kind_fields[1]


_QUEUE_LISTS = st.lists(nonempty_text(max_size=12), max_size=4, unique=True)


@cache
def screens(max_controls: int = 8) -> st.SearchStrategy[ScreenSchema]:
    """Valid ScreenSchemas: controls of every kind, unique ids, options, queues and resolution codes."""
    return st.builds(
        ScreenSchema,
        screen_id=ids(),
        process_id=ids(),
        version=st.integers(min_value=1, max_value=50),
        title=short_text(),
        controls=control_lists(max_controls),
        transfer_queues=_QUEUE_LISTS,
        resolution_codes=_QUEUE_LISTS,
    )


# --- actions --------------------------------------------------------------------------------------------------


@cache
def actions(control_ids: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[Action]:
    """Any schema-valid action (not tied to a screen). Control ids match the id pattern."""
    cids = ids() if control_ids is None else control_ids
    return st.one_of(
        st.builds(FillField, control_id=cids, value=short_text()),
        st.builds(SelectOption, control_id=cids, option=short_text()),
        st.builds(ToggleCheckbox, control_id=cids, checked=st.booleans()),
        st.builds(ClickControl, control_id=cids),
        st.builds(SendTextToChat, text=nonempty_text()),
        st.builds(TransferChat, queue=nonempty_text(max_size=12)),
        st.builds(CloseChat, resolution=nonempty_text(max_size=12)),
    )


@st.composite
def valid_number_values(draw: st.DrawFn, control: NumberControl) -> str:
    number = draw(finite_floats(control.minimum, control.maximum))
    if number == int(number) and abs(number) < 1e15 and draw(st.booleans()):
        return str(int(number))
    return repr(number)


@st.composite
def valid_text_values(draw: st.DrawFn, control: TextControl) -> str:
    if control.pattern is None:
        return draw(short_text(max_size=min(control.max_length, 40)))
    fits = st.from_regex(control.pattern, fullmatch=True).filter(lambda v: len(v) <= control.max_length)
    return draw(fits | st.just(""))  # an empty value clears the field; the pattern is not applied to it


def valid_actions_for_control(control: Control) -> st.SearchStrategy[Action] | None:
    """A valid action on ``control`` were it enabled (the enabled flag is not looked at); None when the control
    is never the target of an action (table, chat)."""
    cid = control.id
    match control:
        case TextControl():
            return valid_text_values(control).map(lambda v: FillField(control_id=cid, value=v))
        case TextareaControl():
            values = short_text(max_size=min(control.max_length, 60))
            return values.map(lambda v: FillField(control_id=cid, value=v))
        case NumberControl():
            return valid_number_values(control).map(lambda v: FillField(control_id=cid, value=v))
        case DateControl():
            return st.dates().map(lambda d: FillField(control_id=cid, value=d.isoformat()))
        case SelectControl():
            return st.sampled_from(control.options).map(lambda o: SelectOption(control_id=cid, option=o))
        case CheckboxControl():
            return st.booleans().map(lambda b: ToggleCheckbox(control_id=cid, checked=b))
        case ButtonControl() | LinkControl() | ToolControl():
            return st.just(ClickControl(control_id=cid))
        case TableControl() | ChatControl():
            return None
    raise AssertionError(f"unknown control {control!r}")  # pragma: no cover


def valid_action_strategies(screen: ScreenSchema) -> list[st.SearchStrategy[Action]]:
    """One strategy per thing on ``screen`` that an action may validly target."""
    found: list[st.SearchStrategy[Action]] = []
    for control in screen.controls:
        if control.enabled:
            strategy = valid_actions_for_control(control)
            if strategy is not None:
                found.append(strategy)
    if screen.chat_enabled:
        found.append(nonempty_text().map(lambda t: SendTextToChat(text=t)))
    if screen.transfer_queues:
        found.append(st.sampled_from(screen.transfer_queues).map(lambda q: TransferChat(queue=q)))
    if screen.resolution_codes:
        found.append(st.sampled_from(screen.resolution_codes).map(lambda r: CloseChat(resolution=r)))
    return found


def valid_actions(screen: ScreenSchema) -> st.SearchStrategy[Action]:
    """Actions that pass ``validate_action(action, screen)``; ``st.nothing()`` when the screen allows none."""
    found = valid_action_strategies(screen)
    return st.one_of(*found) if found else st.nothing()


# --- states ---------------------------------------------------------------------------------------------------


@cache
def field_values() -> st.SearchStrategy[str | float | bool | None]:
    return st.none() | st.booleans() | finite_floats() | short_text()


@cache
def panels() -> st.SearchStrategy[Panel]:
    cells = st.dictionaries(short_text(max_size=8), short_text(max_size=12), max_size=3)
    return st.builds(Panel, title=short_text(), fields=cells, rows=st.lists(cells, max_size=2))


@cache
def chat_messages() -> st.SearchStrategy[ChatMessage]:
    return st.builds(ChatMessage, role=enums(ChatRole), text=short_text(max_size=60))


_STEPS = st.integers(min_value=0, max_value=500)
_FREE_VALUES = st.dictionaries(ids(), field_values(), max_size=4)
_PANEL_DICTS = st.dictionaries(ids(), panels(), max_size=2)


@st.composite
def ui_states(draw: st.DrawFn, screen: ScreenSchema | None = None) -> UIState:
    """Valid UIStates (etag computed); values are keyed by the screen's control ids and a few others."""
    scr = draw(screens(max_controls=5)) if screen is None else screen
    keys = st.sampled_from([c.id for c in scr.controls]) | ids() if scr.controls else ids()
    values = st.dictionaries(keys, field_values(), max_size=4) if scr.controls else _FREE_VALUES
    return UIState(
        session_id=draw(nonempty_text(max_size=12)),
        case_id=draw(nonempty_text(max_size=12)),
        process_id=scr.process_id,
        screen=scr,
        values=draw(values),
        panels=draw(_PANEL_DICTS),
        chat=draw(lists_of(chat_messages(), 3)),
        recent_actions=draw(lists_of(actions(), 3)),
        step=draw(_STEPS),
    )


# --- proposals, decisions, feedback ---------------------------------------------------------------------------


@cache
def etags() -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789abcdef", min_size=20, max_size=20)


@cache
def proposal_features() -> st.SearchStrategy[ProposalFeatures]:
    return st.builds(
        ProposalFeatures,
        logprob=finite_floats(max_value=0.0),
        margin=finite_floats(min_value=0.0),
        entropy=finite_floats(min_value=0.0),
        rank=st.integers(min_value=0, max_value=10),
        probability=unit_floats(),
    )


@cache
def scored_actions() -> st.SearchStrategy[ScoredAction]:
    return st.builds(ScoredAction, action=actions(), features=proposal_features())


@st.composite
def proposals(draw: st.DrawFn, state: UIState | None = None) -> Proposal:
    """Proposals; bound to ``state`` (ids, step, etag, a valid action where one exists) when given."""
    if state is None:
        session_id, case_id, process_id = (
            draw(nonempty_text(max_size=12)),
            draw(nonempty_text(max_size=12)),
            draw(ids()),
        )
        step, etag, action = draw(_STEPS), draw(etags()), draw(actions())
    else:
        session_id, case_id, process_id, step, etag = (
            state.session_id,
            state.case_id,
            state.process_id,
            state.step,
            state.etag,
        )
        found = valid_action_strategies(state.screen)
        action = draw(st.one_of(*found) if found else actions())
    return Proposal(
        proposal_id=draw(nonempty_text(max_size=12)),
        session_id=session_id,
        case_id=case_id,
        process_id=process_id,
        step=step,
        state_etag=etag,
        action=action,
        features=draw(proposal_features()),
        alternatives=draw(lists_of(scored_actions(), 3)),
        model_version=draw(short_text(max_size=12)),
    )


@cache
def slice_keys() -> st.SearchStrategy[SliceKey]:
    return st.builds(SliceKey, process_id=ids(), action_type=enums(ActionType))


@st.composite
def decisions(draw: st.DrawFn, proposal: Proposal | None = None) -> Decision:
    """Decisions; bound to ``proposal`` (id, session, etag, slice) when given."""
    p = draw(proposals()) if proposal is None else proposal
    return Decision(
        decision_id=draw(nonempty_text(max_size=12)),
        proposal_id=p.proposal_id,
        session_id=p.session_id,
        state_etag=p.state_etag,
        outcome=draw(enums(DecisionOutcome)),
        slice=SliceKey(process_id=p.process_id, action_type=p.action.type),
        stage=draw(enums(AutonomyStage)),
        tier=draw(enums(RiskTier)),
        score=draw(optional(unit_floats())),
        threshold=draw(optional(unit_floats())),
        audit=draw(st.booleans()),
        reason=draw(nonempty_text()),
        decided_at=draw(datetimes()),
    )


@st.composite
def deferrals(draw: st.DrawFn) -> Deferral:
    state = draw(ui_states())
    proposal = draw(proposals(state))
    return Deferral(
        deferral_id=draw(nonempty_text(max_size=12)),
        session_id=state.session_id,
        queue=draw(nonempty_text(max_size=12)),
        proposal=proposal,
        decision=draw(decisions(proposal)),
        state=state,
        created_at=draw(datetimes()),
    )


@st.composite
def operator_decisions(draw: st.DrawFn, proposal: Proposal | None = None) -> OperatorDecision:
    """Consistent operator answers: accept (no action, no reason), correct (action + reason), reject (reason)."""
    p = draw(proposals()) if proposal is None else proposal
    verdict = draw(enums(Verdict))
    reason = None if verdict == Verdict.ACCEPT else draw(enums(RejectReason))
    corrected = draw(actions()) if verdict == Verdict.CORRECT else None
    return OperatorDecision(
        proposal_id=p.proposal_id,
        session_id=p.session_id,
        state_etag=p.state_etag,
        verdict=verdict,
        corrected_action=corrected,
        reason=reason,
        operator_id=draw(nonempty_text(max_size=12)),
        decided_at=draw(datetimes()),
    )


@st.composite
def feedback_records(draw: st.DrawFn) -> FeedbackRecord:
    state = draw(ui_states())
    proposal = draw(proposals(state))
    accepted = draw(st.booleans())
    return FeedbackRecord(
        record_id=draw(nonempty_text(max_size=12)),
        source=draw(enums(FeedbackSource)),
        state=state,
        proposal=proposal,
        accepted=accepted,
        reason=None if accepted else draw(enums(RejectReason)),
        operator_action=None if accepted else draw(optional(actions())),
        operator_id=draw(nonempty_text(max_size=12)),
        slice=SliceKey(process_id=proposal.process_id, action_type=proposal.action.type),
        created_at=draw(datetimes()),
    )


@st.composite
def qa_items(draw: st.DrawFn) -> QAItem:
    state = draw(ui_states())
    proposal = draw(proposals(state))
    return QAItem(
        qa_id=draw(nonempty_text(max_size=12)),
        session_id=state.session_id,
        queue=draw(nonempty_text(max_size=12)),
        state=state,
        proposal=proposal,
        decision=draw(decisions(proposal)),
        executed_at=draw(datetimes()),
    )


@st.composite
def qa_answers(draw: st.DrawFn) -> QAAnswer:
    """Consistent reviews: accept (no action, no reason), correct (action + reason), reject (reason)."""
    verdict = draw(enums(Verdict))
    return QAAnswer(
        qa_id=draw(nonempty_text(max_size=12)),
        proposal_id=draw(nonempty_text(max_size=12)),
        session_id=draw(nonempty_text(max_size=12)),
        verdict=verdict,
        reason=None if verdict == Verdict.ACCEPT else draw(enums(RejectReason)),
        corrected_action=draw(actions()) if verdict == Verdict.CORRECT else None,
        note=draw(optional(st.text(max_size=40))),
        operator_id=draw(nonempty_text(max_size=12)),
        decided_at=draw(datetimes()),
    )


# --- traces and risk ------------------------------------------------------------------------------------------


@st.composite
def trace_steps(draw: st.DrawFn, step: int | None = None, screen: ScreenSchema | None = None) -> TraceStep:
    number = draw(_STEPS) if step is None else step
    state = draw(ui_states(screen))
    found = valid_action_strategies(state.screen)
    return TraceStep(
        step=number,
        state=state,
        action=draw(st.one_of(*found) if found else actions()),
        operator_id=draw(optional(nonempty_text(max_size=12))),
        timestamp=draw(optional(datetimes())),
        duration_s=draw(optional(finite_floats(0.0, 1e6))),
        bayes_p=draw(optional(unit_floats())),
        bayes_type_p=draw(optional(unit_floats())),
    )


@st.composite
def traces(draw: st.DrawFn, max_steps: int = 3) -> Trace:
    """Traces with steps numbered 0..n-1; all steps of one trace share one screen."""
    screen = draw(screens(max_controls=5))
    n = draw(st.integers(min_value=0, max_value=max_steps))
    return Trace(
        trace_id=draw(nonempty_text(max_size=12)),
        source=draw(enums(TraceSource)),
        case_id=draw(nonempty_text(max_size=12)),
        process_id=screen.process_id,
        steps=[draw(trace_steps(i, screen)) for i in range(n)],
        attributes=draw(json_dicts()),
        ground_truth=draw(json_dicts()),
    )


@cache
def risk_overrides(
    process_ids: st.SearchStrategy[str] | None = None, control_ids: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[RiskOverride]:
    pids = ids() if process_ids is None else process_ids
    cids = ids() if control_ids is None else control_ids
    return st.builds(
        RiskOverride,
        process_id=st.none() | pids,
        action_type=st.none() | enums(ActionType),
        control_id=st.none() | cids,
        tier=enums(RiskTier),
    )


@cache
def risk_policies() -> st.SearchStrategy[RiskPolicy]:
    tiers = st.dictionaries(enums(ActionType), enums(RiskTier), max_size=7)
    return st.builds(RiskPolicy, default_tiers=tiers, overrides=st.lists(risk_overrides(), max_size=4))


# --- every exported payload -----------------------------------------------------------------------------------

PAYLOADS: dict[type[BaseModel], st.SearchStrategy[Any]] = {
    ScreenSchema: screens(),
    UIState: ui_states(),
    RiskPolicy: risk_policies(),
    Proposal: proposals(),
    Decision: decisions(),
    Deferral: deferrals(),
    OperatorDecision: operator_decisions(),
    FeedbackRecord: feedback_records(),
    TraceStep: trace_steps(),
    Trace: traces(),
    SessionCommand: st.builds(
        SessionCommand,
        command=enums(SessionCommandKind),
        session_id=st.text(min_size=1, max_size=20),
        case_id=st.text(min_size=1, max_size=20),
        process_id=st.text(min_size=1, max_size=20),
        issued_by=st.text(min_size=1, max_size=20),
        issued_at=st.datetimes(timezones=st.just(UTC)),
    ),
    QAItem: qa_items(),
    QAAnswer: qa_answers(),
}
"""A strategy per payload model that ``schemas.export`` exports."""
