"""Option cues (policy.option_cues): the customer's words that settle a select, learned from traces; the
prompt's ``~`` hint and the reply guard read them. Hand-built traces for the rules, the sandbox's own for the
real thing."""

from __future__ import annotations

import random
from collections.abc import Sequence

from policy.option_cues import OptionCues
from policy.replies import ReplyGuard
from policy.serialise import SerialConfig, serialise_state
from sandbox.generate import iter_traces
from schemas import Action, ChatMessage, ChatRole, ScreenSchema, SelectOption, SendTextToChat, UIState
from schemas.screen import ChatControl, SelectControl
from schemas.trace import Trace, TraceSource, TraceStep
from tests.policy.scripted import Scripted

OPTIONS = ["overcharge", "duplicate", "unknown_charge"]
SAYS = {
    "duplicate": ("I was charged twice.", "It's a double charge."),
    "overcharge": ("I was charged too much.",),
    "unknown_charge": ("There's a charge I don't recognise.",),
}


def state(messages: Sequence[str], process: str = "billing") -> UIState:
    screen = ScreenSchema(
        screen_id="s", process_id=process, title="S",
        controls=[ChatControl(id="chat", label="Chat"), SelectControl(id="dispute", label="Type", options=OPTIONS)],
    )  # fmt: skip
    chat = [ChatMessage(role=ChatRole.CUSTOMER, text=t) for t in messages]
    return UIState(session_id="S", case_id="C", process_id=process, screen=screen, chat=chat)


def traces(n: int, seed: int = 0) -> list[Trace]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = rng.choice(OPTIONS)
        clear = rng.random() < 0.6
        # Unclear openings: the operator guesses, by habit mostly "overcharge".
        said = rng.choice(SAYS[kind]) if clear else "Something is off with my bill."
        option = kind if clear else rng.choice(["overcharge"] * 3 + OPTIONS)
        step = TraceStep(step=0, state=state([f"Hello, invoice INV-{i:06d}. {said}"]),
                         action=SelectOption(control_id="dispute", option=option))  # fmt: skip
        out.append(Trace(trace_id=f"T{i}", source=TraceSource.SANDBOX, case_id=f"C{i}", process_id="billing",
                         steps=[step]))  # fmt: skip
    return out


def test_words_that_settle_an_option_are_learned_and_words_every_customer_writes_are_not() -> None:
    cues = OptionCues().fit(traces(400))
    learned = cues.cues_["billing\x1fdispute"]
    assert {"twice", "double"} <= set(learned["duplicate"]) and "recognise" in learned["unknown_charge"]
    assert not any(w in {"hello", "invoice", "charge"} for words in learned.values() for w in words)
    assert OptionCues.from_dict(cues.to_dict()).cues_ == cues.cues_
    assert OptionCues().fit(traces(5)).cues_ == {}  # too few steps: nothing is learned


def test_the_cued_options_of_a_state_typos_allowed() -> None:
    cues = OptionCues().fit(traces(400))
    assert cues.cued(state(["I was charged twcie this month"]), "dispute") == ["duplicate"]
    assert cues.cued(state(["It's a charge I don't recoginse"]), "dispute") == ["unknown_charge"]
    assert cues.cued(state(["Something is off with my bill."]), "dispute") == []
    assert cues.cued(state(["I was charged twice"], process="other"), "dispute") == []  # learned per process


def test_the_hint_names_the_cued_option_where_the_config_asks_for_it() -> None:
    cues = OptionCues().fit(traces(400))
    s = state(["I was charged twice this month"])
    assert "dispute:select ~duplicate" in serialise_state(s, SerialConfig(), cues=cues)
    assert "~" not in serialise_state(s, SerialConfig())
    assert "~" not in serialise_state(s, SerialConfig.from_dict({}), cues=cues)  # a model saved before the field


def test_a_cued_option_is_no_guess_for_the_guard() -> None:
    cues = OptionCues().fit(traces(400))
    ask = SendTextToChat(text="Charged twice, overcharged or unknown?")
    ranked: list[tuple[Action, float]] = [
        (SelectOption(control_id="dispute", option="duplicate"), 0.5),
        (SelectOption(control_id="dispute", option="overcharge"), 0.3),
        (ask, 0.2),
    ]
    said = state(["I was charged twice this month"])
    assert ReplyGuard(Scripted(ranked)).propose(said).action == ask  # type: ignore[union-attr]
    assert ReplyGuard(Scripted(ranked), cues=cues).propose(said).action == ranked[0][0]  # type: ignore[union-attr]
    unclear = state(["Something is off with my bill."])
    assert ReplyGuard(Scripted(ranked), cues=cues).propose(unclear).action == ask  # type: ignore[union-attr]


def test_on_the_sandbox_the_cued_option_is_the_operators_choice() -> None:
    worked = iter_traces(700, 13)
    cues = OptionCues().fit(worked[:550])
    # Words settle disputes and remedies; a tool's result settles a parcel's next step (signed for: wait a day).
    assert "recognise" in cues.cues_["billing_dispute\x1fdispute_type"]["unknown_charge"]
    assert "order.proof=signature" in cues.cues_["delivery_status\x1fnext_step"]["wait_24h"]
    steps = [(s.state, s.action) for t in worked[550:] for s in t.steps if isinstance(s.action, SelectOption)]
    cued = [(a, cues.cued(st, a.control_id)) for st, a in steps]
    hinted = [(a, c) for a, c in cued if c]
    assert len(hinted) >= 0.3 * len(steps)
    assert sum(a.option in c for a, c in hinted) >= 0.9 * len(hinted)
