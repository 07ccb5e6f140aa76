"""The sandbox BPM platform: cases run on SpiffWorkflow, each user task is a screen, actions change the screen.

This is the system a real BPM integration would put behind the adapter contract: ``observe`` a case's UI state
and ``apply`` an action to it (validated against the current screen, idempotent by key). Submitting a screen
completes its BPMN user task and the engine's gateways choose the next screen from the data the screen produced.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState

from sandbox.crm import CRM, PLANS, Customer
from sandbox.journal import PlatformJournal
from sandbox.playbook import Screen
from sandbox.processes.common import CaseContext, CaseSeed, ProcessSpec, thanks
from sandbox.processes.customers import (
    FOLLOWUP_QUESTIONS,
    UPSET_ENDINGS,
    UPSET_OPENINGS,
    mistyped,
    named_items,
    recheck_reply,
    with_questions,
)
from sandbox.processes.orders import ITEMS
from sandbox.processes.registry import PROCESSES, gateway_variables, workflow_spec
from sandbox.scenario import Scenario
from sandbox.view import NUDGES, View, classify_operator_text
from schemas import (
    Action,
    ChatMessage,
    ChatRole,
    ClickControl,
    CloseChat,
    FillField,
    Panel,
    SelectOption,
    SendTextToChat,
    ToggleCheckbox,
    TransferChat,
    UIState,
    validate_action,
)
from schemas.screen import ControlKind

HISTORY = 8  # recent actions carried in a UIState
MAX_STEPS = 60  # a case that takes more actions than this is ended as stuck

FIRST_NAMES = ("Anna", "Ben", "Chloe", "Dev", "Elif", "Farah", "George", "Hana", "Ivan", "Jade", "Kofi", "Lena")
LAST_NAMES = ("Smith", "Okafor", "Novak", "Patel", "Garcia", "Kowalski", "Brown", "Ahmed", "Rossi", "Chen")


class CaseNotFound(KeyError):
    pass


class CaseEnded(RuntimeError):
    pass


@dataclass
class Case:
    case_id: str
    session_id: str
    index: int
    spec: ProcessSpec
    seed: CaseSeed
    workflow: Any
    rules: dict[str, float]
    screen_id: str = ""
    values: dict[str, str | float | bool | None] = field(default_factory=dict)
    panels: dict[str, Panel] = field(default_factory=dict)
    chat: list[ChatMessage] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    said: set[str] = field(default_factory=set)
    clicked: set[str] = field(default_factory=set)
    submitted: dict[str, str] = field(default_factory=dict)  # values of completed screens ("case" panel)
    ended: str | None = None  # "closed" | "transferred" | "stuck"
    end_code: str | None = None
    idempotency: dict[str, int] = field(default_factory=dict)  # key -> step at which it was applied
    rng: random.Random = field(default_factory=random.Random)
    world_rng: random.Random = field(default_factory=random.Random)  # nudges, moods (calibrated world)
    followup_asked: bool = False
    failed: bool = False  # the last action failed in the environment (a tool that did not answer)

    @property
    def step(self) -> int:
        return len(self.actions)


class SandboxPlatform:
    """Holds open cases in memory, with the CRM in SQLite. Thread-safe: one lock serialises changes."""

    def __init__(self, scenario: Scenario | None = None, seed: int = 0, crm: CRM | None = None) -> None:
        self.scenario = scenario or Scenario()
        self.seed = seed
        self.crm = crm or CRM()
        self.cases: dict[str, Case] = {}
        self.lock = threading.RLock()  # public: the REST API holds it for check-then-act sequences
        self._next_index = 0
        self._used_indexes: set[int] = set()
        self._classic = self.scenario.world.is_classic
        self._screens: dict[tuple[str, str], Screen] = {}
        self.journal: PlatformJournal | None = None

    def attach_journal(self, journal: PlatformJournal) -> int:
        """Replay ``journal`` (a fresh platform of the journal's seed: the cases it recorded come back as they
        were), then record every later change in it. Returns the number of operations replayed."""
        with self.lock:
            if self.cases or self.journal is not None:
                raise ValueError("journal: attach it to a fresh platform, before any case is opened")
            replayed = 0
            for entry in journal.entries():
                if entry.op == "open":
                    assert entry.case_index is not None
                    self.open_case(entry.process_id, entry.case_index)
                elif entry.op == "act" and entry.case_id in self.cases:
                    assert entry.action is not None
                    self.act(entry.case_id, entry.action, entry.idempotency_key)
                elif entry.op == "forget":
                    self.forget(entry.case_id)
                replayed += 1
            self.journal = journal
            return replayed

    # --- cases -----------------------------------------------------------------------------------------

    def open_case(self, process_id: str | None = None, case_index: int | None = None) -> str:
        """Create a customer and a case; the customer's first message is in the chat. Deterministic for
        (platform seed, case index)."""
        with self.lock:
            if process_id is not None and process_id not in PROCESSES:
                raise ValueError(f"process_id: unknown process {process_id!r}")
            requested = process_id  # what the journal records: the call, so a replay draws what this one drew
            index = self._next_index if case_index is None else case_index
            if index in self._used_indexes:
                raise ValueError(f"case_index: {index} was already used on this platform")
            self._used_indexes.add(index)
            self._next_index = max(self._next_index, index + 1)
            rng = random.Random(f"{self.seed}:{index}")
            if process_id is None:
                names, weights = self.scenario.weights()
                process_id = rng.choices(names, weights=weights)[0]
            spec = PROCESSES[process_id]
            customer = self._new_customer(rng, index)
            rules = self.scenario.rules_at(index)
            world = self.scenario.world
            world_rng = random.Random(f"{self.seed}:{index}:world")
            ctx = CaseContext(
                rng, self.crm, index, customer.customer_id, self.scenario.typo_rate, rules, world.second_request_rate,
                world, world_rng,
            )  # fmt: skip
            seed = spec.new_case(ctx)
            case_id = f"C{self.seed}-{index:06d}"
            if not self._classic:
                self._shape(seed, spec, world_rng, case_id)
            self.crm.commit()
            workflow = BpmnWorkflow(workflow_spec(process_id))
            # Gateway variables start as None so a condition never fails on a name no screen has set yet.
            workflow.data.update(dict.fromkeys(gateway_variables(process_id)))
            workflow.data.update(rules)
            workflow.do_engine_steps()
            case = Case(
                case_id=case_id,
                session_id=f"S{self.seed}-{index:06d}",
                index=index,
                spec=spec,
                seed=seed,
                workflow=workflow,
                rules=rules,
                rng=random.Random(f"{self.seed}:{index}:customer"),
                world_rng=world_rng,
            )
            fields = {
                "customer_id": customer.customer_id,
                "name": customer.name,
                "tier": customer.tier,
                "plan": customer.plan,
            }
            if world.fact_rich_replies:  # what the calibrated world's answers quote from the record
                fields |= {"contract_end": seed.facts["contract_end"], "reference": seed.facts["reference"]}
            case.panels["customer"] = Panel(title="Customer", fields=fields)
            case.chat.append(ChatMessage(role=ChatRole.CUSTOMER, text=seed.first_message))
            self._enter_next_screen(case)
            self.cases[case.case_id] = case
            if self.journal is not None:
                self.journal.opened(case.case_id, requested, index)
            return case.case_id

    def _shape(self, seed: CaseSeed, spec: ProcessSpec, rng: random.Random, case_id: str) -> None:
        """The calibrated world's additions to a new case, drawn from the case's own world stream (the process's
        draws, and so the classic cases, are untouched): a bad mood, a mistyped order number, a follow-up question
        for after the confirmation, the record's contract end and the case reference."""
        world = self.scenario.world
        if rng.random() < world.upset_rate:
            seed.facts["upset"] = "yes"
            seed.first_message = f"{seed.first_message} {rng.choice(UPSET_OPENINGS)}"
        order_id = seed.facts.get("order_id", "")
        quoted = bool(order_id) and order_id in seed.first_message
        named = named_items(seed.first_message)
        if rng.random() < world.wrong_id_rate and quoted:
            seed.first_message = seed.first_message.replace(order_id, mistyped(order_id, rng))
        elif rng.random() < world.wrong_order_rate and quoted and named:
            other = self._other_order(seed.customer_id, order_id, named, rng)
            seed.facts["quoted_other_order"] = other
            seed.first_message = seed.first_message.replace(order_id, other)
        if rng.random() < world.followup_rate and "confirm" in spec.replies:
            topics = ["reference", "confirmation"]
            topics += [name for name, builder in (("timing", spec.timing), ("amount", spec.amount)) if builder]
            seed.facts["followup"] = rng.choice(topics)
        seed.facts["contract_end"] = f"{rng.randint(2027, 2029)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        seed.facts["reference"] = case_id

    def _other_order(self, customer_id: str, order_id: str, named: list[str], rng: random.Random) -> str:
        """Another order of the customer's, for an item they did not write about: the number they quote by mistake."""
        order = self.crm.order(order_id, customer_id)
        assert order is not None
        other = self.crm.fresh_id("ORD", rng)
        item = rng.choice([i for i in ITEMS if i not in named])
        self.crm.add_order(other, customer_id, item, round(rng.uniform(15, 250), 2), "delivered", order["purchased"],
                           "signature", order["purchased"], order["warranty_until"])  # fmt: skip
        return other

    def _new_customer(self, rng: random.Random, index: int) -> Customer:
        customer = Customer(
            customer_id=f"CU{self.seed}-{index:06d}",
            name=f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            dob=f"19{rng.randint(50, 99)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            postcode=f"{rng.choice('ABCDEFGHJKLMNPRSTW')}{rng.choice('ABCDEFGHJKLMNPRSTW')}{rng.randint(10, 99)} "
            f"{rng.randint(1, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}",
            plan=rng.choice(tuple(PLANS)),
            tenure_years=rng.randint(0, 12),
            tier=rng.choice(("standard", "standard", "gold")),
            balance=round(rng.choice((0.0, 0.0, rng.uniform(-80, 0), rng.uniform(0, 50))), 2),
        )
        self.crm.add_customer(customer)
        return customer

    def case(self, case_id: str) -> Case:
        try:
            return self.cases[case_id]
        except KeyError:
            raise CaseNotFound(case_id) from None

    # --- observation -----------------------------------------------------------------------------------

    @staticmethod
    def _visible_panels(case: Case) -> dict[str, Panel]:
        """The read-only panels a screen shows: lookup results, the customer, and the data of earlier screens."""
        panels = dict(case.panels)
        if case.submitted:
            panels["case"] = Panel(title="Case data", fields=dict(case.submitted))
        return panels

    def observe(self, case_id: str) -> UIState:
        with self.lock:
            case = self.case(case_id)
            panels = self._visible_panels(case)
            return UIState(
                session_id=case.session_id,
                case_id=case.case_id,
                process_id=case.spec.process_id,
                screen=case.spec.schemas[case.screen_id],
                values=dict(case.values),
                panels=panels,
                chat=list(case.chat),
                recent_actions=case.actions[-HISTORY:],
                step=case.step,
            )

    def view(self, case_id: str) -> View:
        with self.lock:
            return self._view(self.case(case_id))

    def _view(self, case: Case) -> View:
        panels = self._visible_panels(case)
        return View(
            process_id=case.spec.process_id,
            screen_id=case.screen_id,
            values=case.values,
            panels=panels,
            chat=case.chat,
            said=case.said,
            clicked=case.clicked,
            world=self.scenario.world,
        )

    def playbook_screen(self, case_id: str, screen_id: str | None = None) -> Screen:
        """The operators' work items on the case's current screen, or on its screen ``screen_id`` (what an
        after-the-fact reviewer judges a past step on); in the calibrated world with the answers to the customer's
        extra questions, which the items that end the case wait for."""
        with self.lock:
            case = self.case(case_id)
            screen_id = case.screen_id if screen_id is None else screen_id
            key = (case.spec.process_id, screen_id)
            screen = self._screens.get(key)
            if screen is None:
                screen = case.spec.playbook[screen_id]
                if not self._classic:
                    screen = with_questions(screen, case.spec.schemas[screen_id], case.spec)
                self._screens[key] = screen
            return screen

    def nudge(self, case_id: str) -> bool:
        """With the world's nudge rate, the customer writes while the operator works ("Any update?"): the screen
        changes under whatever was about to be done. Returns whether it happened."""
        with self.lock:
            case = self.case(case_id)
            rate = self.scenario.world.nudge_rate
            if rate <= 0.0 or case.ended or case.world_rng.random() >= rate:
                return False
            case.chat.append(ChatMessage(role=ChatRole.CUSTOMER, text=case.world_rng.choice(NUDGES)))
            return True

    def other_reject_rate(self, case_id: str) -> float | None:
        """P(a reviewing operator takes over for reasons of their own) on this case; None in the classic world,
        where it is each operator's constant."""
        if self._classic:
            return None
        world = self.scenario.world
        upset = self.case(case_id).seed.facts.get("upset") == "yes"
        return world.other_reject + (world.other_upset if upset else 0.0)

    def open_tasks(self, case_id: str) -> list[dict[str, str]]:
        """The BPMN user tasks that are ready (what a BPM task list shows)."""
        with self.lock:
            case = self.case(case_id)
            if case.ended:
                return []
            return [
                {"task_id": str(t.id), "name": t.task_spec.name, "title": t.task_spec.bpmn_name or t.task_spec.name}
                for t in case.workflow.get_tasks(state=TaskState.READY, manual=True)
            ]

    # --- actions ---------------------------------------------------------------------------------------

    def apply(self, case_id: str, action: Action, idempotency_key: str | None = None) -> UIState:
        """Validate ``action`` against the current screen and apply it; return the new state. A repeated
        idempotency key returns the current state without applying anything again."""
        with self.lock:
            self.act(case_id, action, idempotency_key)
            return self.observe(case_id)

    def act(self, case_id: str, action: Action, idempotency_key: str | None = None) -> None:
        """``apply`` without building the new state (the simulator observes only when it needs to)."""
        with self.lock:
            case = self.case(case_id)
            if idempotency_key is not None and idempotency_key in case.idempotency:
                return
            if case.ended:
                raise CaseEnded(f"case {case_id} has ended ({case.ended})")
            validate_action(action, case.spec.schemas[case.screen_id])
            case.failed = False
            self._apply(case, action)
            case.actions.append(action)
            if idempotency_key is not None:
                case.idempotency[idempotency_key] = case.step
            if not case.ended and case.step >= MAX_STEPS:
                self._end(case, "stuck", None)
            if self.journal is not None:  # written before apply returns: the caller is told only of what is kept
                self.journal.acted(case_id, action, idempotency_key)

    def _apply(self, case: Case, action: Action) -> None:
        case.panels.pop("form_errors", None)
        match action:
            case FillField(control_id=c, value=v):
                case.values[c] = v
            case SelectOption(control_id=c, option=o):
                case.values[c] = o
            case ToggleCheckbox(control_id=c, checked=b):
                case.values[c] = b
            case ClickControl(control_id=c):
                self._click(case, c)
            case SendTextToChat(text=text):
                case.chat.append(ChatMessage(role=ChatRole.OPERATOR, text=text))
                intent = classify_operator_text(text)
                case.said.add(intent)
                reply = self._customer_reply(case, intent)
                if reply is not None:
                    case.chat.append(ChatMessage(role=ChatRole.CUSTOMER, text=reply))
            case TransferChat(queue=q):
                self._end(case, "transferred", q)
            case CloseChat(resolution=r):
                self._end(case, "closed", r)

    def _customer_reply(self, case: Case, intent: str) -> str | None:
        """What the customer answers to an operator message of ``intent`` (None: nothing)."""
        reply = case.spec.replies.get(intent)
        if self._classic:
            return None if reply is None else reply(case.seed, case.rng)
        facts = case.seed.facts
        text: str | None
        if intent == "confirm" and facts.get("followup") and not case.followup_asked:
            case.followup_asked = True
            text = case.world_rng.choice(FOLLOWUP_QUESTIONS[facts["followup"]])
        elif intent.startswith("answer_"):
            text = thanks(case.seed, case.rng)
        elif intent == "ask_recheck" and "order_id" in facts:
            text = recheck_reply(case.seed, case.rng)
        else:
            text = None if reply is None else reply(case.seed, case.rng)
        if text is not None and facts.get("upset") == "yes" and case.world_rng.random() < 0.5:
            text += case.world_rng.choice(UPSET_ENDINGS)
        return text

    def _click(self, case: Case, control_id: str) -> None:
        control = case.spec.schemas[case.screen_id].control(control_id)
        assert control is not None  # validated before
        if control.kind == ControlKind.TOOL and self._tool_down(case):
            # The backend did not answer: the panel says so and the lookup is not done (try again).
            result_panel = str(getattr(control, "result_panel", control_id))
            case.panels[result_panel] = Panel(title=control.label, fields={"error": "service unavailable, try again"})
            case.failed = True
            return
        case.clicked.add(control_id)
        if control.kind == ControlKind.TOOL:
            tool = case.spec.tools[control_id]
            name, panel = tool(self.crm, case.seed, case.values)
            case.panels[name] = panel
        elif control.kind == ControlKind.BUTTON and getattr(control, "submits", False):
            missing = self._missing_required(case)
            if missing:
                # Like a real BPM form: the submit is refused and the screen shows what is missing.
                case.panels["form_errors"] = Panel(title="Form errors", fields={m: "required" for m in missing})
                return
            self._complete_screen(case)

    def _tool_down(self, case: Case) -> bool:
        rate = self.scenario.world.tool_outage_rate
        return rate > 0.0 and case.world_rng.random() < rate

    def failed(self, case_id: str) -> bool:
        """Whether the case's last action failed in the environment (a tool that did not answer)."""
        with self.lock:
            return self.case(case_id).failed

    def missing_required(self, case_id: str) -> list[str]:
        """What blocks submitting the current screen: required fields without a value and required lookups
        that have not been run."""
        with self.lock:
            return self._missing_required(self.case(case_id))

    def _missing_required(self, case: Case) -> list[str]:
        missing = []
        for c in case.spec.schemas[case.screen_id].controls:
            if not c.required or c.kind == ControlKind.CHAT:
                continue
            done = (
                c.id in case.clicked if c.kind == ControlKind.TOOL else case.values.get(c.id) not in (None, "", False)
            )
            if not done:
                missing.append(c.id)
        return missing

    def _task(self, case: Case) -> Any:
        ready = case.workflow.get_tasks(state=TaskState.READY, manual=True)
        return ready[0] if ready else None

    def _complete_screen(self, case: Case) -> None:
        task = self._task(case)
        data: dict[str, Any] = {c.id: case.values.get(c.id) for c in case.spec.schemas[case.screen_id].controls}
        for name, panel in case.panels.items():
            for field_name, field_value in panel.fields.items():
                data[f"{name}_{field_name}"] = field_value
        data.update(case.rules)
        task.data.update(data)
        task.run()
        case.workflow.do_engine_steps()
        for control_id, value in case.values.items():
            if value not in (None, ""):
                case.submitted[control_id] = str(value)
        self._enter_next_screen(case)

    def _enter_next_screen(self, case: Case) -> None:
        task = self._task(case)
        case.values = {}
        case.clicked = set()
        if task is None:
            self._end(case, "closed", "completed")
            return
        case.screen_id = task.task_spec.name

    def _end(self, case: Case, status: str, code: str | None) -> None:
        case.ended = status
        case.end_code = code
        if not case.workflow.is_completed():
            case.workflow.cancel()

    # --- outcome ---------------------------------------------------------------------------------------

    def outcome(self, case_id: str) -> dict[str, Any]:
        """The case's outcome and whether it matches the hidden truth (status, code, decisive form values)."""
        with self.lock:
            return self._outcome(self.case(case_id))

    def _outcome(self, case: Case) -> dict[str, Any]:
        truth = case.seed.truth
        fields = {k: case.submitted.get(k, case.values.get(k)) for k in truth["fields"]}
        status_ok = truth["status"] == "any" or case.ended == truth["status"]
        correct = bool(
            case.ended
            and status_ok
            and case.end_code in truth["codes"]
            and all(str(fields[k]) == str(v) for k, v in truth["fields"].items())
        )
        return {"status": case.ended, "code": case.end_code, "fields": fields, "correct": correct}

    def forget(self, case_id: str) -> None:
        """Drop an ended case from memory (the generator does this to keep memory flat)."""
        with self.lock:
            if self.cases.pop(case_id, None) is not None and self.journal is not None:
                self.journal.forgot(case_id)
