"""``pipeline schema``: one JSON Schema per write kind that accepts what the worker accepts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest

from pipeline.cli import main
from pipeline.kinds import BY_NAME, KINDS
from pipeline.payload_schema import DRAFT

GOOD: dict[str, dict[str, Any]] = {
    "insert_nodes": {
        "project_id": "p",
        "nodes": [
            {"node_id": "root", "label": "All"},
            {"node_id": "a", "parent_id": "root", "label": "A", "status": "pruned"},
        ],
    },
    "record_events": {
        "events": [
            {
                "event_id": str(uuid.uuid4()),
                "task_id": "t-1",
                "event_type": "tool_call",
                "payload": {"tool": "grep", "args": [1, 2]},
                "occurred_at": "2026-01-02T03:04:05+00:00",
            }
        ],
        "urgent": True,
    },
}
TRANSCRIPT = {
    "task_id": "t-1",
    "phase": "plan",
    "iteration": 0,
    "role": "chunk",
    "content": "text",
    "timestamp": "2026-01-02T03:04:05+00:00",
}
# The seq is optional (derived when absent); the item lists may be empty (nothing to write).
GOOD["append_transcripts"] = {"transcripts": [TRANSCRIPT, {**TRANSCRIPT, "seq": 3}]}
ALSO_GOOD: list[tuple[str, dict[str, Any]]] = [
    ("append_transcripts", {"transcripts": []}),
    ("append_transcripts", {"transcripts": [{**TRANSCRIPT, "seq": None}]}),
    ("record_events", {"events": []}),
    ("record_events", {"events": [], "urgent": True}),
]
BAD: list[tuple[str, dict[str, Any]]] = [
    ("append_transcripts", {"transcripts": [{**TRANSCRIPT, "seq": -1}]}),  # the derived range
    ("append_transcripts", {"transcripts": [{**TRANSCRIPT, "seq": 2**31}]}),
    ("append_transcripts", {}),
    ("insert_nodes", {"project_id": "p", "nodes": [{"node_id": "a"}]}),  # no label
    ("insert_nodes", {"project_id": "p", "nodes": []}),  # no items
    ("insert_nodes", {"project_id": "", "nodes": [{"node_id": "a", "label": "A"}]}),
    ("insert_nodes", {"project_id": "p", "nodes": [{"node_id": "a", "label": "A"}], "x": 1}),
    ("update_statuses", {"project_id": "p", "statuses": [{"node_id": "a", "status": "dead"}]}),
    ("update_scores", {"project_id": "p", "scores": [{"node_id": "a", "version": -1}]}),
    ("record_events", {"events": [{**GOOD["record_events"]["events"][0], "event_id": "nope"}]}),
    ("update_scores", {"project_id": "p", "scores": [{"node_id": "a", "ucb_score": True}]}),
    ("record_events", {"events": [{**GOOD["record_events"]["events"][0], "occurred_at": 1}]}),
    ("record_events", {"events": GOOD["record_events"]["events"], "urgent": 1}),
]


def run_schema(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert main(["schema", *args]) == 0
    return json.loads(capsys.readouterr().out)


def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_every_kind_has_a_valid_schema_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    document = run_schema(capsys)
    assert list(document) == [kind.name for kind in KINDS]
    for name, schema in document.items():
        assert schema["$schema"] == DRAFT == "https://json-schema.org/draft/2020-12/schema"
        assert f"`{name}`" in schema["description"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        validator(schema)


def test_a_good_payload_passes_and_bad_ones_fail_as_in_the_worker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = run_schema(capsys)
    for name, payload in [*GOOD.items(), *ALSO_GOOD]:
        assert list(validator(document[name]).iter_errors(payload)) == [], (name, payload)
        BY_NAME[name].validate(payload)
    for name, payload in BAD:
        assert list(validator(document[name]).iter_errors(payload)) != [], (name, payload)
        with pytest.raises(pydantic.ValidationError):
            BY_NAME[name].validate(payload)


def test_one_kind_to_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "heartbeat.json"
    assert main(["schema", "--kind", "heartbeat", "--out", str(out)]) == 0
    assert capsys.readouterr().out == ""
    schema = json.loads(out.read_text(encoding="utf-8"))
    assert schema["$schema"] == DRAFT and schema["title"] == "Heartbeat"
    good = {"service": "verifier", "instance_id": "i-1", "status": "ok", "metadata": {}}
    assert list(validator(schema).iter_errors(good)) == []
    assert list(validator(schema).iter_errors({**good, "service": ""})) != []


def test_an_unknown_kind_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--kind", "nope"]) == 2
    assert "known: upsert_project" in capsys.readouterr().err
