"""JSON Schema export through the CLI: every file written, each parses, and dumped instances fit their schema.

``jsonschema`` is not installed in this environment, so instances are checked against the exported schema's
top-level ``properties`` / ``required`` / ``additionalProperties`` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter

from schemas import Action
from schemas.export import EXPORTED, export_json_schemas
from service.cli import main
from tests.schemas import strategies as s

NAMES = sorted([*EXPORTED, "Action"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schemas") / "nested" / "dir"
    assert main(["schemas", "export", str(out)]) == 0
    return out


def load(directory: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((directory / f"{name}.schema.json").read_text())
    return loaded


def test_cli_writes_one_file_per_payload(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [f"{n}.schema.json" for n in NAMES]
    for name in NAMES:
        schema = load(exported, name)
        assert isinstance(schema, dict) and schema
    assert main(["schemas", "export", str(exported)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == [f"{n}.schema.json" for n in NAMES]


def test_export_is_deterministic(exported: Path, tmp_path: Path) -> None:
    paths = export_json_schemas(tmp_path)
    assert sorted(p.name for p in paths) == [f"{n}.schema.json" for n in NAMES]
    for path in paths:
        assert path.read_bytes() == (exported / path.name).read_bytes()


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_schema_matches_model(exported: Path, name: str) -> None:
    schema = load(exported, name)
    model = EXPORTED[name]
    assert schema == json.loads(json.dumps(model.model_json_schema()))
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(model.model_fields)
    required = {n for n, f in model.model_fields.items() if f.is_required()}
    assert set(schema.get("required", [])) == required


def test_action_schema_is_a_tagged_union(exported: Path) -> None:
    schema = load(exported, "Action")
    assert schema == json.loads(json.dumps(TypeAdapter(Action).json_schema()))
    assert schema["discriminator"]["propertyName"] == "type"
    assert len(schema["oneOf"]) == 7


def check_instance(schema: dict[str, Any], instance: dict[str, Any]) -> None:
    props = schema["properties"]
    assert set(instance) <= set(props), set(instance) - set(props)
    assert set(schema.get("required", [])) <= set(instance)
    for key, value in instance.items():
        declared = props[key]
        if "const" in declared:
            assert value == declared["const"]
        if "enum" in declared:
            assert value in declared["enum"]
        if declared.get("type") == "integer":
            assert isinstance(value, int)
        if declared.get("type") == "string" and "format" not in declared:
            assert isinstance(value, str)


@settings(max_examples=50, deadline=None)
@given(payload=st.one_of(*s.PAYLOADS.values()))
def test_dumped_instances_fit_their_schema(exported: Path, payload: BaseModel) -> None:
    name = next(n for n, m in EXPORTED.items() if m is type(payload))
    check_instance(load(exported, name), payload.model_dump(mode="json"))


@settings(max_examples=50, deadline=None)
@given(action=s.actions())
def test_dumped_actions_fit_their_variant(exported: Path, action: Action) -> None:
    schema = load(exported, "Action")
    ref = schema["discriminator"]["mapping"][action.type.value]
    variant = schema["$defs"][ref.rsplit("/", 1)[-1]]
    check_instance(variant, action.model_dump(mode="json"))
