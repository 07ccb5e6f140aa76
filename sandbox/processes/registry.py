"""All processes of the sandbox by id, and their parsed BPMN specs (parsed once per process)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from SpiffWorkflow.bpmn.parser import BpmnParser

from sandbox.processes import (
    account_closure,
    address_change,
    billing_dispute,
    delivery_status,
    plan_change,
    refund_damaged,
    warranty_claim,
)
from sandbox.processes.common import ProcessSpec

PROCESSES: dict[str, ProcessSpec] = {
    m.SPEC.process_id: m.SPEC
    for m in (
        delivery_status,
        refund_damaged,
        address_change,
        plan_change,
        account_closure,
        billing_dispute,
        warranty_claim,
    )
}


@cache
def workflow_spec(process_id: str) -> Any:
    """The SpiffWorkflow spec of a process, parsed from its BPMN 2.0 file. BPMN files are trusted package data
    (gateway conditions are Python expressions evaluated by the engine)."""
    spec = PROCESSES[process_id]
    parser = BpmnParser()
    path = resources.files("sandbox.processes") / spec.bpmn_file
    with resources.as_file(path) as bpmn:
        parser.add_bpmn_file(str(bpmn))
    return parser.get_spec(process_id)


@cache
def gateway_variables(process_id: str) -> frozenset[str]:
    """The names the process's gateway conditions read (parsed from the BPMN conditions)."""
    import ast
    import builtins
    import xml.etree.ElementTree as ET

    spec = PROCESSES[process_id]
    text = (resources.files("sandbox.processes") / spec.bpmn_file).read_text()
    names: set[str] = set()
    for element in ET.fromstring(text).iter("{http://www.omg.org/spec/BPMN/20100524/MODEL}conditionExpression"):
        tree = ast.parse((element.text or "").strip(), mode="eval")
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return frozenset(names - set(dir(builtins)))
