"""One serialisation of a UI state into a prompt and of actions into text and back.

Training, inference and the critic all call this module, so a model never sees a state written two ways.

Prompt (one line per section, sections in this order, absent sections omitted)::

    process plan_change | screen pc_select
    controls chat:chat ; new_plan:select* ~premium ; confirm_terms:checkbox* ; submit:button ; ...
    queues billing ; tier2            resolutions resolved ; duplicate
    panel customer: name=George Garcia ; tier=standard
    chat C: I'll take premium. Also, when does my contract end? / O: Which plan? / C: Premium. Is premium cheaper?
    pending contract
    asked Is premium cheaper?
    history click lookup_plans / select new_plan = premium
    style 2
    step 4

A select lists, after ``~``, the options the customer's messages name (typos allowed): see
``mentioned_options``.

Truncation rule (documented in docs/policy.md): option hints read the last ``policy.values.CHAT_WINDOW`` messages
(as the value sources do); the chat keeps its last ``chat_messages`` messages and, ahead of them, the
customer's first ``opening_messages`` (within that window), each cut to ``message_chars`` characters; the
history keeps the last ``history`` actions, each cut to ``action_chars``;
a panel keeps ``MAX_ROWS`` table rows and every value is cut to ``value_chars``. Durations (panel fields whose
name ends in ``_s``) are written as coarse log-scale buckets, which a small model can use and raw seconds it
cannot. Identifiers (e-mail addresses, dates, ids, postcodes, street addresses, long numbers) are written as their kind
(``#id``): the model decides *which* value to copy through a slot, never by spelling it. Nothing else is
dropped, so equal states give equal prompts.

Action text (slot form, see ``policy.values``)::

    click <control>      select <control> = <option>      toggle <control> = on|off
    fill <control> = <value>      send <text>      transfer <queue>      close <resolution>
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from policy.rows import named_rows
from policy.values import MAX_ROWS, fill_slots, mask_entities, recent_chat, said_by_customer, to_slots, value_sources
from policy.words import customer_said, word_matches
from schemas.actions import (
    Action,
    ClickControl,
    CloseChat,
    FillField,
    SelectOption,
    SendTextToChat,
    ToggleCheckbox,
    TransferChat,
)
from schemas.screen import ControlKind
from schemas.state import ChatRole, UIState
from schemas.trace import Trace

ACTION_START = "<act>"
ACTION_END = "</act>"
_ROLE = {ChatRole.CUSTOMER: "C", ChatRole.OPERATOR: "O", ChatRole.SYSTEM: "S"}
_VERB = {
    ClickControl: "click",
    SelectOption: "select",
    ToggleCheckbox: "toggle",
    FillField: "fill",
    SendTextToChat: "send",
    TransferChat: "transfer",
    CloseChat: "close",
}
_DURATION_BUCKETS = ((0, "0s"), (10, "<10s"), (60, "<1m"), (600, "<10m"), (3600, "<1h"), (4 * 3600, "<4h"))
_DAY = 86400


@dataclass(frozen=True)
class SerialConfig:
    """The truncation limits of the prompt and what it shows; saved with a model so inference serialises as
    training did. The defaults are the chat-screen layout; ``for_traces`` chooses a layout for given traces (an
    event log's long cases get their whole kept history, counts and no per-case identifiers).

    * ``list_buttons``: buttons appear in the ``controls`` line. An event log's screen is one button per
      activity, the same in every state: listing them costs most of a short prompt and says nothing (the
      candidates are the buttons anyway).
    * ``bare_clicks``: a click in the history is written as its control id alone and never cut (the activity
      sequence of an event log, where ``action_chars`` would cut long activity names to the same prefix).
    * ``counts``: a ``repeats`` line with how often each action that occurs more than once in the kept history
      does (most frequent first): loops and rework are what the next activity of a long case depends on.
    * ``drop_fields``: panel fields (``name`` or ``panel.name``) left out, such as event timestamps and ids,
      whose values never recur and only cost tokens.
    * ``opening_messages``: the customer's first messages kept ahead of the last ``chat_messages`` when the chat
      is longer, after them ``...``. The opening states the case's requests: a second request made there ("...
      Also, when does my contract end?") is still open when the first is done, and without it a model closes
      the chat too early. 0 in models saved before this field (``from_dict``).
    * ``pending_requests``: a ``pending`` line naming the requests of the opening that no operator message has
      answered yet, as a ``RequestTracker`` (``policy.requests``) learned them from the traces. Seeing the
      opening was not enough for a small model to tell whether its request was answered (the commonest error
      of its copilot reviews was closing before it was); whether it was is a fact of the chat, so it is
      written. False in models saved before this field.
    * ``option_cues``: a select's ``~`` hint also names the options the customer's words or a panel's value
      settle without naming them ("charged twice": ``duplicate``; ``proof=signature``: ``wait_24h``), as
      ``OptionCues`` (``policy.option_cues``) learned them from the traces. False in models saved before this
      field.
    * ``named_rows``: a table row the customer names is marked ``~`` (the same mark as a select's options the
      customer names, ``policy.rows``): the order line of the item they say is damaged, the invoice line of the
      charge they dispute. The one named row's values are also slots of their own (``policy.values``): the mark
      alone did not teach a small model which numbered row to copy (decision 0021). False in models saved
      before this field.
    * ``operator_style``: a ``style`` line naming the style the operator's messages in the chat show, as
      ``OperatorStyles`` (``policy.styles``) learned the styles from the traces: which wording of a reply they
      use, and their habits beyond it. False in models saved before this field.
    * ``precondition_cues``: a checkbox not yet ticked is marked ``~on`` once the customer has said what
      operators wait for before ticking it (``photo_received`` once a photo is attached), as ``Preconditions``
      (``policy.preconditions``) learned it from the traces: the same mark as the options the customer's words
      settle. Reading "I attached a photo" in the opening was not enough for a small model to tick the box
      rather than ask for the photo (decision 0028). False in models saved before this field.
    * ``open_questions``: an ``asked`` line with the customer's later question while it is open
      (``RequestTracker.open_question``: no operator message after it, or only answers to the opening's
      requests). An operator often answers a request of the opening first and the customer thanks them, and the
      question two messages back was where a small model closed the chat: 41 of the 123 replies the best policy
      got right and the policy proposed another action for were such closes (decision 0030). False in models
      saved before this field.
    """

    chat_messages: int = 4
    message_chars: int = 160
    history: int = 6
    action_chars: int = 32
    value_chars: int = 80
    list_buttons: bool = True
    bare_clicks: bool = False
    counts: bool = False
    drop_fields: tuple[str, ...] = ()
    opening_messages: int = 1
    pending_requests: bool = True
    option_cues: bool = True
    named_rows: bool = True
    operator_style: bool = True
    precondition_cues: bool = True
    open_questions: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "drop_fields", tuple(self.drop_fields))  # a list when read back from JSON

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SerialConfig:
        """The config saved with a model; a field the save predates keeps the layout that model was trained
        with (no opening messages, no pending requests, no option cues, no named rows, no style line, no
        checkbox marks, no asked line)."""
        before = {
            "opening_messages": 0,
            "pending_requests": False,
            "option_cues": False,
            "named_rows": False,
            "operator_style": False,
            "precondition_cues": False,
            "open_questions": False,
        }
        return cls(**{**before, **data})

    @classmethod
    def for_traces(cls, traces: Sequence[Trace]) -> SerialConfig:
        """The layout for these traces: the default for chat screens; for activity logs (every screen only
        buttons and no chat, as the event-log importers make) the whole history the states keep, bare clicks,
        counts, no button list, and without the panel fields whose values hardly recur (``rare_fields``)."""
        states = [step.state for trace in traces for step in trace.steps]
        if not states or not is_activity_log(traces):
            return cls()
        longest = max(len(state.recent_actions) for state in states)
        return cls(
            history=max(longest, 1),
            list_buttons=False,
            bare_clicks=True,
            counts=True,
            drop_fields=rare_fields(states),
        )


def is_activity_log(traces: Sequence[Trace]) -> bool:
    """Whether every state of ``traces`` (at least one) shows only buttons and no chat, as the event-log importers
    make them: an activity log, not a chat process."""
    states = [step.state for trace in traces for step in trace.steps]
    return bool(states) and all(
        not state.chat and all(c.kind == ControlKind.BUTTON for c in state.screen.controls) for state in states
    )


def _chat_parts(state: UIState, cfg: SerialConfig) -> list[str]:
    """The chat as the prompt writes it: the customer's opening messages that fall before the last
    ``chat_messages`` (``opening_messages`` of them, then ``...``), and the last ``chat_messages``. The opening
    is read within the last ``CHAT_WINDOW`` messages, as everything else (the truncation rule)."""
    window = recent_chat(state)
    recent = window[-cfg.chat_messages :] if cfg.chat_messages > 0 else []
    earlier = window[: len(window) - len(recent)]
    opening = [m for m in earlier if m.role == ChatRole.CUSTOMER][: cfg.opening_messages]
    shown = [*opening, None, *recent] if opening else recent  # None: the "..." between them
    return ["..." if m is None else f"{_ROLE[m.role]}: {_cut(m.text, cfg.message_chars)}" for m in shown]


def rare_fields(
    states: Sequence[UIState], *, top: int = 254, min_coverage: float = 0.2, max_singletons: float = 0.8
) -> tuple[str, ...]:
    """Panel fields (``panel.name``) whose ``top`` most frequent values cover under ``min_coverage`` of the
    states that show the field, or whose values are seen once on more than ``max_singletons`` of them:
    timestamps and ids, which a model cannot learn from. Durations (``*_s``) are bucketed when written, so
    they stay."""
    values: dict[str, Counter[str]] = defaultdict(Counter)
    for state in states:
        for panel_id, panel in state.panels.items():
            for name, value in panel.fields.items():
                if not name.endswith("_s"):
                    values[f"{panel_id}.{name}"][value] += 1
    rare = []
    for key, counts in sorted(values.items()):
        rows = sum(counts.values())
        covered = sum(n for _, n in counts.most_common(top))
        singletons = sum(1 for n in counts.values() if n == 1)
        if covered < min_coverage * rows or singletons > max_singletons * rows:
            rare.append(key)
    return tuple(rare)


class ActionTextError(ValueError):
    """Action text that does not parse, or names a slot the state lacks."""


def coarse_duration(seconds: float) -> str:
    """A duration as a log-scale bucket: 0s, <10s, <1m, <10m, <1h, <4h, <1d, then whole days up to a week,
    then weeks."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds == 0:
        return "0s"
    for limit, label in _DURATION_BUCKETS[1:]:
        if seconds < limit:
            return label
    if seconds < _DAY:
        return "<1d"
    days = int(seconds // _DAY)
    return f"{days}d" if days < 7 else f"{min(days // 7, 9)}w"


def _cut(text: str, limit: int) -> str:
    # Identifiers are masked to their kind: which order number a customer has never decides the next step (the
    # value is copied through a slot), and a dozen random digits per id would dominate a small model's prompt.
    text = mask_entities(" ".join(text.split()))  # newlines and runs of spaces would only cost tokens
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _panel_value(field: str, value: str, limit: int) -> str:
    if field.endswith("_s"):
        try:
            return coarse_duration(float(value))
        except ValueError:
            pass
    return _cut(value, limit)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if len(w) >= 3]


def mentioned_options(options: list[str], customer_words: list[str]) -> list[str]:
    """The options of a select that the customer's words name, allowing typos (every word of the option has a
    customer word at least 80% similar: ``word_matches``). Operators read "pzemium plfn" as "premium plan"; a
    small model reading raw characters needs the hint."""
    found = []
    for option in options:
        words = _words(option)
        if words and all(word_matches(w, customer_words) for w in words):
            found.append(option)
    return found


def named_or_cued(state: UIState, control_id: str, options: list[str], cues: CuedOptions | None) -> bool:
    """Whether the customer has made the select's choice: their words name one of its ``options``
    (``mentioned_options``, typos allowed) or ``cues`` finds one their words or a panel settle."""
    if mentioned_options(options, sorted(customer_said(state))):
        return True
    return cues is not None and bool(cues.cued(state, control_id))


class PendingRequests(Protocol):
    """What the prompt's ``pending`` and ``asked`` lines read (``policy.requests.RequestTracker``)."""

    def pending(self, state: UIState) -> list[str]: ...

    def asked(self, state: UIState) -> str | None: ...


class CuedOptions(Protocol):
    """What the ``~`` hint reads beside the options named literally (``policy.option_cues.OptionCues``)."""

    def cued(self, state: UIState, control_id: str) -> list[str]: ...


class StyleReader(Protocol):
    """What the ``style`` line reads (``policy.styles.OperatorStyles``)."""

    def style(self, state: UIState) -> int | None: ...


class MetPreconditions(Protocol):
    """What a checkbox's ``~on`` mark reads (``policy.preconditions.Preconditions``)."""

    def met(self, state: UIState, action: Action) -> bool: ...


def serialise_state(
    state: UIState,
    config: SerialConfig | None = None,
    requests: PendingRequests | None = None,
    cues: CuedOptions | None = None,
    styles: StyleReader | None = None,
    preconditions: MetPreconditions | None = None,
) -> str:
    """The prompt for one state (without the action marker); ``requests`` writes the ``pending`` line,
    ``cues`` adds to the ``~`` hints of selects, ``styles`` writes the ``style`` line and ``preconditions`` the
    ``~on`` marks of checkboxes where the config asks for them."""
    cfg = config or SerialConfig()
    screen = state.screen
    customer_words = sorted({w for m in recent_chat(state) if m.role == ChatRole.CUSTOMER for w in _words(m.text)})
    lines = [f"process {state.process_id} | screen {screen.screen_id}"]
    controls: list[str] = []
    for control in screen.controls:
        if control.kind == ControlKind.TABLE or (control.kind == ControlKind.BUTTON and not cfg.list_buttons):
            continue
        flags = ("*" if control.required else "") + ("" if control.enabled else "!")
        item = f"{control.id}:{control.kind.value}{flags}"
        value = state.values.get(control.id)
        if isinstance(value, bool):
            item += "=on" if value else ""
        elif value not in (None, ""):
            item += f"={_cut(str(value), cfg.value_chars)}"
        options = getattr(control, "options", None)
        if options and customer_words:
            named = set(mentioned_options(list(options), customer_words))
            if cfg.option_cues and cues is not None:
                named.update(cues.cued(state, control.id))
            if named:
                item += " ~" + "|".join(o for o in options if o in named)
        elif control.kind == ControlKind.CHECKBOX and value is not True and cfg.precondition_cues and preconditions:
            item += " ~on" if preconditions.met(state, ToggleCheckbox(control_id=control.id, checked=True)) else ""
        controls.append(item)
    if controls or cfg.list_buttons:
        lines.append("controls " + " ; ".join(controls))
    if screen.transfer_queues:
        lines.append("queues " + " ; ".join(screen.transfer_queues))
    if screen.resolution_codes:
        lines.append("resolutions " + " ; ".join(screen.resolution_codes))
    dropped = set(cfg.drop_fields)
    for panel_id, panel in sorted(state.panels.items()):
        fields = " ; ".join(
            f"{k}={_panel_value(k, v, cfg.value_chars)}"
            for k, v in sorted(panel.fields.items())
            if v != "" and k not in dropped and f"{panel_id}.{k}" not in dropped
        )
        kept = panel.rows[:MAX_ROWS]
        marks = named_rows(kept, said_by_customer(state)) if cfg.named_rows and kept else [False] * len(kept)
        rows = " / ".join(
            ("~" if marked else "") + ", ".join(f"{k}={_cut(v, cfg.value_chars)}" for k, v in sorted(row.items()))
            for row, marked in zip(kept, marks, strict=True)
        )
        lines.append(f"panel {panel_id}: " + " | ".join(part for part in (fields, rows) if part))
    if state.chat:
        lines.append("chat " + " / ".join(_chat_parts(state, cfg)))
        pending = requests.pending(state) if cfg.pending_requests and requests is not None else []
        if pending:
            lines.append("pending " + " ; ".join(pending))
        asked = requests.asked(state) if cfg.open_questions and requests is not None else None
        if asked:
            lines.append("asked " + _cut(asked, cfg.message_chars))
    if state.recent_actions and cfg.history > 0:
        recent = [_history_text(a, cfg) for a in state.recent_actions[-cfg.history :]]
        lines.append("history " + " / ".join(recent))
        repeated = sorted(((t, n) for t, n in Counter(recent).items() if n > 1), key=lambda item: (-item[1], item[0]))
        if cfg.counts and repeated:
            lines.append("repeats " + " ; ".join(f"{text}={n}" for text, n in repeated))
    # Last, next to the action: a small model reads a line beside its target more readily (decision 0022).
    style = styles.style(state) if cfg.operator_style and styles is not None and state.chat else None
    if style is not None:
        lines.append(f"style {style}")
    lines.append(f"step {state.step}")
    return "\n".join(lines)


def _history_text(action: Action, cfg: SerialConfig) -> str:
    if cfg.bare_clicks and isinstance(action, ClickControl):
        return action.control_id
    return _cut(literal_action_text(action), cfg.action_chars)


def literal_action_text(action: Action) -> str:
    """The action text with literal values (no slots): for history lines and for people."""
    verb = _VERB[type(action)]
    match action:
        case ClickControl(control_id=c):
            return f"{verb} {c}"
        case SelectOption(control_id=c, option=o):
            return f"{verb} {c} = {o}"
        case ToggleCheckbox(control_id=c, checked=b):
            return f"{verb} {c} = {'on' if b else 'off'}"
        case FillField(control_id=c, value=v):
            return f"{verb} {c} = {v}"
        case SendTextToChat(text=t):
            return f"{verb} {t}"
        case TransferChat(queue=q):
            return f"{verb} {q}"
        case CloseChat(resolution=r):
            return f"{verb} {r}"
    raise TypeError(f"not an action: {action!r}")  # pragma: no cover - the union is closed


REPLY_PREFIX = "send "


def reply_of(text: str) -> str | None:
    """The reply (slot form) an action text sends, None for an action text of another kind."""
    return text[len(REPLY_PREFIX) :] if text.startswith(REPLY_PREFIX) else None


def reply_template(action: SendTextToChat, state: UIState) -> str:
    """A sent reply in slot form relative to ``state``: as the template bank and the learned readers hold it."""
    return to_slots(action.text, value_sources(state))


def action_text(action: Action, state: UIState, sources: dict[str, str] | None = None) -> str:
    """The action in slot form relative to ``state``: the target the model has to produce."""
    match action:
        case FillField(control_id=c, value=v):
            srcs = value_sources(state) if sources is None else sources
            return f"fill {c} = {to_slots(v, srcs)}"
        case SendTextToChat(text=t):
            srcs = value_sources(state) if sources is None else sources
            return f"{REPLY_PREFIX}{to_slots(t, srcs)}"
    return literal_action_text(action)


def parse_action_text(text: str, state: UIState, sources: dict[str, str] | None = None) -> Action:
    """The action an action text means in ``state`` (slots filled). Raises ActionTextError when the text does
    not parse or names a slot the state lacks. Validity against the screen is checked by the caller."""
    verb, _, rest = text.partition(" ")
    if not rest:
        raise ActionTextError(f"action text {text!r} has no target")
    try:
        if verb in ("send", "fill"):
            srcs = value_sources(state) if sources is None else sources
            if verb == "send":
                return SendTextToChat(text=fill_slots(rest, srcs))
            control, sep, value = rest.partition(" = ")
            if not sep:
                raise ActionTextError(f"action text {text!r}: expected 'fill <control> = <value>'")
            return FillField(control_id=control, value=fill_slots(value, srcs))
        if verb in ("select", "toggle"):
            control, sep, value = rest.partition(" = ")
            if not sep:
                raise ActionTextError(f"action text {text!r}: expected '{verb} <control> = <value>'")
            if verb == "select":
                return SelectOption(control_id=control, option=value)
            if value not in ("on", "off"):
                raise ActionTextError(f"action text {text!r}: a checkbox is 'on' or 'off'")
            return ToggleCheckbox(control_id=control, checked=value == "on")
        if verb == "click":
            return ClickControl(control_id=rest)
        if verb == "transfer":
            return TransferChat(queue=rest)
        if verb == "close":
            return CloseChat(resolution=rest)
    except LookupError as exc:
        raise ActionTextError(f"action text {text!r} names a value the state lacks: {exc}") from None
    except ValueError as exc:  # pydantic's ValidationError (empty text, too long)
        raise ActionTextError(f"action text {text!r}: {exc}") from None
    raise ActionTextError(f"action text {text!r}: unknown verb {verb!r}")
