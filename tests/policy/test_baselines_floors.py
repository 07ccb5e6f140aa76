"""The floor predictors on small hand-built traces, and on the real BPI 2013 log (integration, skipped without
../shared/data)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bench.common import shared_data_dir
from policy.baselines.floors import START, MostFrequentPerScreen, SuffixNGram, _SlotTexts
from policy.evaluate import evaluate
from policy.predictor import NextActionPredictor
from policy.serialise import action_text
from schemas.actions import Action, ClickControl, CloseChat, FillField, SendTextToChat, action_key
from schemas.screen import ButtonControl, ChatControl, ScreenSchema
from schemas.state import ChatMessage, ChatRole, Panel, UIState
from schemas.trace import Trace, TraceSource, TraceStep

BUTTONS = ("a", "b", "c", "d", "x", "y")


def _screen(screen_id: str = "s1", process_id: str = "p") -> ScreenSchema:
    return ScreenSchema(
        screen_id=screen_id,
        process_id=process_id,
        controls=[ChatControl(id="chat"), *(ButtonControl(id=b) for b in BUTTONS)],
        resolution_codes=["done"],
    )


def _trace(
    actions: Sequence[Action | str],
    *,
    case: str,
    screen: str = "s1",
    process: str = "p",
    customer: str | None = None,
    history: int = 16,
) -> Trace:
    """One trace on one screen; a str is a click on that button. ``customer`` adds a customer panel (a source of
    slot values)."""
    acts: list[Action] = [ClickControl(control_id=a) if isinstance(a, str) else a for a in actions]
    panels = {"customer": Panel(fields={"name": customer})} if customer else {}
    steps = [
        TraceStep(
            step=i,
            state=UIState(
                session_id=case,
                case_id=case,
                process_id=process,
                screen=_screen(screen, process),
                panels=panels,
                recent_actions=acts[max(0, i - history) : i],
                step=i,
            ),
            action=action,
        )
        for i, action in enumerate(acts)
    ]
    return Trace(trace_id=case, source=TraceSource.SANDBOX, case_id=case, process_id=process, steps=steps)


def _state(history: Sequence[str], *, screen: str = "s1", process: str = "p", customer: str | None = None) -> UIState:
    """The state after clicking ``history`` (from the start of the case)."""
    trace = _trace([*history, "a"], case="q", screen=screen, process=process, customer=customer)
    return trace.steps[-1].state


def _keys(predictor: NextActionPredictor, states: Sequence[UIState]) -> list[str]:
    return [action_key(p.action) for p in predictor.predict(states)]


# --- MostFrequentPerScreen ---------------------------------------------------------------------------------------


def test_most_frequent_per_screen_majority_confidence_and_fallbacks() -> None:
    traces = [
        _trace(["a", "a", "b"], case="t1"),
        _trace(["a", "c"], case="t2"),
        _trace(["x", "y", "y", "y", "y"], case="t3", screen="s2"),
        _trace(["d", "d"], case="t4", process="other"),
    ]
    model = MostFrequentPerScreen().fit(traces)
    assert model.fit(traces) is model  # fit returns self
    predictions = model.predict(
        [_state([]), _state([], screen="s2"), _state([], screen="new"), _state([], process="q")]
    )
    assert [action_key(p.action) for p in predictions] == [
        "click_control:a",  # 3 of 5 clicks on s1
        "click_control:y",  # 4 of 5 on s2
        "click_control:y",  # unseen screen: the process's most frequent (y: 4 of 10)
        "click_control:y",  # unseen process: the global most frequent (y: 4, a: 3, d: 2 ...)
    ]
    assert [p.confidence for p in predictions] == pytest.approx([3 / 5, 4 / 5, 0.0, 0.0])


def test_most_frequent_ties_in_text_order() -> None:
    model = MostFrequentPerScreen().fit([_trace(["d", "b"], case="t1"), _trace(["b", "d"], case="t2")])
    (prediction,) = model.predict([_state([])])
    assert prediction.action == ClickControl(control_id="b")  # "click b" < "click d"
    assert prediction.confidence == pytest.approx(0.5)


def test_most_frequent_fills_slots_and_skips_texts_whose_slot_is_missing() -> None:
    greet = [SendTextToChat(text="Hello Annabel, how can I help?")]
    traces = [
        _trace(greet, case="t1", customer="Annabel"),
        _trace([SendTextToChat(text="Hello Bertrand, how can I help?")], case="t2", customer="Bertrand"),
        _trace(["b"], case="t3"),
    ]
    model = MostFrequentPerScreen().fit(traces)
    # the two greetings are one text in slot form, the most frequent on the screen
    assert model.ranked_["p", "s1"][0][1] == pytest.approx(2 / 3)
    with_name, without_name = model.predict([_state([], customer="Cordelia"), _state([])])
    assert with_name.action == SendTextToChat(text="Hello Cordelia, how can I help?")
    assert with_name.confidence == pytest.approx(2 / 3)
    # no customer panel: the slot cannot be filled, so the next most frequent text is predicted
    assert without_name.action == ClickControl(control_id="b")
    assert without_name.confidence == pytest.approx(1 / 3)


def test_floors_refuse_to_predict_unfitted_or_fit_nothing() -> None:
    for model in (MostFrequentPerScreen(), SuffixNGram()):
        with pytest.raises(RuntimeError, match="not fitted"):
            model.predict([_state([])])
        with pytest.raises(ValueError, match="no training steps"):
            model.fit([])
    with pytest.raises(ValueError, match="max_n"):
        SuffixNGram(max_n=-1)


# --- SuffixNGram -------------------------------------------------------------------------------------------------


def _ambiguous_after_b() -> list[Trace]:
    """After "b" comes "c" when "a" came before it and "d" when "x" did; "d" is the more frequent overall."""
    return [
        _trace(["a", "b", "c"], case="t1"),
        _trace(["x", "b", "d"], case="t2"),
        _trace(["x", "b", "d"], case="t3"),
    ]


def test_bigram_sees_only_the_last_action_and_the_longer_suffix_disambiguates() -> None:
    traces = _ambiguous_after_b()
    bigram = SuffixNGram(max_n=1).fit(traces)
    trigram = SuffixNGram(max_n=2).fit(traces)
    states = [_state(["a", "b"]), _state(["x", "b"])]
    assert bigram.name == "bigram"
    assert _keys(bigram, states) == ["click_control:d", "click_control:d"]
    assert [p.confidence for p in bigram.predict(states)] == pytest.approx([2 / 3, 2 / 3])
    assert _keys(trigram, states) == ["click_control:c", "click_control:d"]
    assert [p.confidence for p in trigram.predict(states)] == pytest.approx([1.0, 1.0])


def test_suffix_ngram_backs_off_to_shorter_suffixes_then_the_screen() -> None:
    model = SuffixNGram(max_n=4).fit(_ambiguous_after_b())
    # "y b" never occurred: back off to "b" (d 2 of 3); "y" never occurred anywhere: the screen's most frequent
    # (b and d 3 of 9 each: text order picks b); an unseen screen: the process fallback, confidence 0
    states = [_state(["y", "b"]), _state(["y"]), _state(["y"], screen="s9")]
    predictions = model.predict(states)
    assert [action_key(p.action) for p in predictions] == ["click_control:d", "click_control:b", "click_control:b"]
    assert [p.confidence for p in predictions] == pytest.approx([2 / 3, 3 / 9, 0.0])


def test_suffix_ngram_max_n_bounds_the_context_and_only_the_longest_seen_suffix_counts() -> None:
    # "a b c" -> d twice, but "b c" -> e three times elsewhere: with max_n=3 the full context wins
    traces = [
        _trace(["a", "b", "c", "d"], case="t1"),
        _trace(["a", "b", "c", "d"], case="t2"),
        *(_trace(["x", "b", "c", "y"], case=f"u{i}") for i in range(3)),
    ]
    state = _state(["a", "b", "c"])
    assert _keys(SuffixNGram(max_n=3).fit(traces), [state]) == ["click_control:d"]
    assert _keys(SuffixNGram(max_n=2).fit(traces), [state]) == ["click_control:y"]


def test_start_token_tells_the_opening_of_a_case_from_the_same_action_mid_case() -> None:
    # every case opens "a a"; mid-case "a" is followed by "b" far more often
    traces = [_trace(["a", "a", "b", "a", "b", "a", "b"], case=f"t{i}") for i in range(3)]
    plain = SuffixNGram(max_n=1).fit(traces)
    anchored = SuffixNGram(max_n=2, start_token=True).fit(traces)
    assert anchored.name == "suffix_ngram_2_start"
    assert ("p", "s1", (START, "click a")) in anchored.table_
    opening, later = _state(["a"]), _state(["a", "a", "b", "a"])
    assert _keys(plain, [opening, later]) == ["click_control:b", "click_control:b"]
    assert _keys(anchored, [opening, later]) == ["click_control:a", "click_control:b"]


def test_start_token_only_when_the_history_is_complete() -> None:
    # a producer that keeps 2 actions: from step 3 on the history is cut and must not look like a case opening
    traces = [_trace(["a", "b", "x", "a", "b", "c", "a", "b", "c"], case="t1", history=2)]
    model = SuffixNGram(max_n=3, start_token=True).fit(traces)
    anchored = {suffix for (_, _, suffix) in model.table_ if START in suffix}
    assert anchored == {(START,), (START, "click a"), (START, "click a", "click b")}  # steps 0, 1, 2 only
    cut = traces[0].steps[5].state  # sees only "a b", like the opening at step 2 (followed by x)
    assert [action_key(a) for a in cut.recent_actions] == ["click_control:a", "click_control:b"]
    (prediction,) = model.predict([cut])
    assert prediction.action == ClickControl(control_id="c")  # "a b" -> x once, c twice
    assert prediction.confidence == pytest.approx(2 / 3)


def test_suffix_ngram_slots_in_the_history_generalise_across_customers() -> None:
    def case(name: str, i: int) -> Trace:
        return _trace(
            [SendTextToChat(text=f"Hi {name}!"), "c", CloseChat(resolution="done")], case=f"t{i}", customer=name
        )

    traces = [case("Annabel", 0), case("Bertrand", 1), _trace(["x", "c", "d"], case="t2")]
    model = SuffixNGram(max_n=2).fit(traces)
    state = _trace([SendTextToChat(text="Hi Cordelia!"), "c", "a"], case="q", customer="Cordelia").steps[2].state
    (prediction,) = model.predict([state])
    # the history "send Hi ⟦name⟧! / click c" was seen twice, always followed by the close
    assert prediction.action == CloseChat(resolution="done")
    assert prediction.confidence == pytest.approx(1.0)


def test_memoised_slot_texts_equal_action_text() -> None:
    """The floors memoise ``action_text`` on the action and the sources its value contains; the result must be
    exactly ``action_text``'s, whichever states come in whichever order."""

    def state(name: str, order: str, chat: str) -> UIState:
        return UIState(
            session_id="s",
            case_id="c",
            process_id="p",
            screen=_screen(),
            values={"email": f"{name.lower()}@example.com"},
            panels={"customer": Panel(fields={"name": f"{name} Smith", "order": order})},
            chat=[ChatMessage(role=ChatRole.CUSTOMER, text=chat)],
        )

    states = [
        state("Annabel", "ORD-1234", "Hi, my order ORD-1234 is late, email annabel@example.com"),
        state("Bertrand", "ORD-1234", "Where is ORD-9999? I am Bertrand"),
        state("Annabel", "ORD-5678", "ORD-1234, 2024-05-01 and 12 Baker Street"),
    ]
    actions: list[Action] = [
        SendTextToChat(text="Thanks Annabel, order ORD-1234 ships 2024-05-01."),
        SendTextToChat(text="Hello  Bertrand   Smith, ORD-9999?"),
        SendTextToChat(text="No value here"),
        FillField(control_id="email", value="annabel@example.com"),
        FillField(control_id="address", value="12 Baker Street"),
        ClickControl(control_id="a"),
        CloseChat(resolution="done"),
    ]
    memo = _SlotTexts()
    for _ in range(2):
        for s in [*states, states[0]]:
            for a in actions:
                assert memo(a, s) == action_text(a, s)
    assert memo(actions[0], states[0]) != action_text(actions[0], states[1])  # the slots depend on the state


def test_pooled_ngram_backs_off_to_other_processes_contexts_on_valid_actions_only() -> None:
    mature = [_trace(["a", "b", "c"], case=f"m{i}", process="old", screen="o1") for i in range(5)]
    mature += [_trace(["x", "y"], case=f"n{i}", process="old", screen="o1") for i in range(5)]
    new = [_trace(["d", "d", "a"], case="new1", process="new", screen="n1")]
    plain = SuffixNGram().fit(mature + new)
    pooled = SuffixNGram(pooled=True).fit(mature + new)
    after_a = _state(["x", "a"], process="new", screen="n1")  # "a" was never followed by anything in "new"
    assert _keys(plain, [after_a]) == ["click_control:d"]  # the new screen's most frequent action
    assert _keys(pooled, [after_a]) == ["click_control:b"]  # what followed "a" in the old process
    assert pooled.rank([after_a], 3)[0][0][0] == ClickControl(control_id="b")
    # its own contexts come first, and a pooled action the screen does not offer is skipped
    assert _keys(pooled, [_state(["d", "d"], process="new", screen="n1")]) == ["click_control:a"]
    small = ScreenSchema(screen_id="n2", process_id="new", controls=[ButtonControl(id="a"), ButtonControl(id="d")])
    on_small = _state(["x", "a"], process="new", screen="n1").model_copy(update={"screen": small})
    assert _keys(pooled, [on_small]) != ["click_control:b"]
    assert pooled.name == "suffix_ngram_6_pooled"


# --- the real log --------------------------------------------------------------------------------------------------

DATA = shared_data_dir() / "eventlogs"
BPI_2013 = "bpi_challenge_2013_incidents.xes.gz"


@pytest.mark.integration
def test_floors_reproduce_the_bpi_2013_reference_numbers() -> None:
    """docs/data.md: on the test split, trained on train_val, micro accuracy over every non-empty
    prefix with the end of the case as a target: last-activity bigram 0.5390, longest-suffix n-gram 0.5578."""
    if not DATA.is_dir():
        pytest.skip(f"real data not available: {DATA} is missing (the shared data folder sits beside the repo)")
    from importers.common import process_id_from_path
    from importers.eventlog import activity_screen, case_traces
    from importers.xes import read_cases

    # import_xes without its separate validation passes: one read of each split, one screen for both
    train_path, test_path = DATA / f"train_val_{BPI_2013}", DATA / f"test_{BPI_2013}"
    train_cases, test_cases = list(read_cases(train_path)), list(read_cases(test_path))
    activities = {event.activity for case in train_cases + test_cases for event in case.events}
    screen = activity_screen(process_id_from_path(train_path), activities)
    train = list(case_traces(train_cases, screen=screen, source=TraceSource.XES, source_file=train_path.name))
    test = list(case_traces(test_cases, screen=screen, source=TraceSource.XES, source_file=test_path.name))

    bigram = evaluate(SuffixNGram(max_n=1).fit(train), test, train, min_prefix=1)
    ngram = evaluate(SuffixNGram().fit(train), test, train, min_prefix=1)
    assert bigram.overall.steps == ngram.overall.steps == 8735  # the README's test prefixes
    assert bigram.overall.action_accuracy == pytest.approx(0.5390, abs=0.003)
    assert ngram.overall.action_accuracy == pytest.approx(0.5578, abs=0.003)
    # "87-90% of test prefixes occur verbatim in training"
    assert ngram.seen_prefix is not None and ngram.unseen_prefix is not None
    assert 0.86 <= ngram.seen_prefix.steps / ngram.overall.steps <= 0.91
