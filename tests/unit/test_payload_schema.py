"""``pipeline schema``: one JSON Schema per job function that accepts what the worker accepts,
with the worker's item limit, a zone on every timestamp, and the ``atomic`` job's writes."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest

from pipeline.cli import main
from pipeline.errors import InvalidPayload
from pipeline.kinds import BY_NAME, KINDS, Target, WriteKind, atomic
from pipeline.kinds.fields import TIMESTAMP_PATTERN, Timestamp
from pipeline.producer import json_schema
from pipeline.producer.json_schema import DRAFT
from pipeline.settings import get_settings

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


U1 = "00000000-0000-0000-0000-000000000001"
# A valid payload of every kind; a kind with a list of items has one item in it.
SAMPLES: dict[str, dict[str, Any]] = {
    "upsert_project": {"project_id": "p", "name": "P"},
    "save_rubric": {
        "project_id": "p",
        "rubric_id": "r",
        "version": 1,
        "principles": [{"name": "a"}, {"name": "b"}],  # one row, however many principles
    },
    "insert_nodes": {"project_id": "p", "nodes": [{"node_id": "a", "label": "A"}]},
    "update_scores": {"project_id": "p", "scores": [{"node_id": "a", "ucb_score": 0.5}]},
    "update_statuses": {"project_id": "p", "statuses": [{"node_id": "a", "status": "pruned"}]},
    "save_principle_scores": {
        "project_id": "p",
        "scores": [
            {"node_id": "a", "rubric_id": "r", "rubric_version": 1, "principle": "x", "score": 1.0}
        ],
    },
    "save_labeled_samples": {
        "project_id": "p",
        "samples": [{"sample_id": U1, "node_id": "a", "label": "l"}],
    },
    "upsert_claims": {"claims": [{"external_id": "c", "content": "text"}]},
    "record_verifications": {
        "results": [
            {"result_id": U1, "claim_id": "c", "framework": "f", "result": {}, "confidence": 0.5}
        ]
    },
    "record_consensus": {
        "decisions": [
            {
                "claim_id": "c",
                "consensus_result": {},
                "participating_frameworks": ["f", "g"],
                "consensus_type": "majority",
                "consensus_confidence": 0.5,
            }
        ]
    },
    "record_training_data": {
        "items": [{"id": U1, "framework": "f", "claim_text": "t", "validity": True}]
    },
    "mark_training_used": {"training_batch_id": "b", "ids": [U1]},
    "register_checkpoint": {"model_name": "m", "version": "v1", "checkpoint_path": "/c"},
    "activate_checkpoint": {"model_name": "m", "version": "v1"},
    "heartbeat": {
        "service": "verifier",
        "instance_id": "i-1",
        "status": "ok",
        "at": "2026-01-02T03:04:05Z",
    },
    "append_transcripts": {"transcripts": [TRANSCRIPT]},
    "record_events": {"events": GOOD["record_events"]["events"]},
}
BODY = "2026-01-02T03:04:05"
# Timestamps that differ in their zone (and in shapes the parser reads), and whether the worker
# takes them: the schema's pattern must say the same.
TIMESTAMPS: list[tuple[str, bool]] = [
    *((f"{BODY}{zone}", True) for zone in ("Z", "z", "+00:00", "-05:30", "+0000", "-2359")),
    *((f"{BODY}{zone}", True) for zone in ("+23:59", "\u221201:00", "\u22120100")),
    ("2026-01-02 03:04Z", True),  # no seconds, a space between date and time
    ("2026-01-02t03:04:05.123456+01:00", True),
    ("2026-01-02_03:04:05,5Z", True),
    (BODY, False),  # no zone
    ("2026-01-02", False),
    ("2026-01-02Z", False),
    *((f"{BODY}{zone}", False) for zone in ("+00", "+1:00", "+000", "+00:0", "+00:00:00")),
    *((f"{BODY}{zone}", False) for zone in ("+24:00", "+00:60", "UTC", " Z", "Z ", "Z\n")),
    *((f"{BODY}{zone}", False) for zone in ("+00:00\n", "+00:00Z", "Z+00:00", "+0000Z")),
    ("2026-01-02T03:04.5Z", False),
    ("2026-01-02T030405Z", False),
]


def with_items(name: str, count: int) -> dict[str, Any]:
    """A kind's sample payload with ``count`` items in its list."""
    payload, field = SAMPLES[name], BY_NAME[name].items
    assert field is not None
    return {**payload, field: payload[field][:1] * count}


def rows(name: str, payload: dict[str, Any]) -> int:
    """The rows the worker counts against its item limit for a payload."""
    kind = BY_NAME[name]
    return len(kind.rows(kind.validate(payload), 1))


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` in a schema document."""
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def formats(node: Any, name: str) -> Iterator[dict[str, Any]]:
    """Every subschema of a document with ``format`` ``name``."""
    if isinstance(node, dict):
        if node.get("format") == name:
            yield node
        for value in node.values():
            yield from formats(value, name)
    elif isinstance(node, list):
        for value in node:
            yield from formats(value, name)


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
    assert list(document) == [*(kind.name for kind in KINDS), "atomic"]
    for name, schema in document.items():
        assert schema["$schema"] == DRAFT == "https://json-schema.org/draft/2020-12/schema"
        assert f"`{name}`" in schema["description"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        validator(schema)
    assert sorted(SAMPLES) == sorted(BY_NAME)  # a new kind needs a sample, for the tests below
    for name, payload in SAMPLES.items():
        assert list(validator(document[name]).iter_errors(payload)) == [], name
        BY_NAME[name].validate(payload)


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


def test_a_job_s_list_of_items_is_bounded_by_the_worker_s_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    limit = get_settings().job_max_items
    document = run_schema(capsys)
    for name, kind in BY_NAME.items():
        bounded = {p for p, s in document[name]["properties"].items() if "maxItems" in s}
        assert bounded == ({kind.items} if kind.items else set()), name
        if kind.items:
            assert document[name]["properties"][kind.items]["maxItems"] == limit
            note = f"at most {limit} items: the worker's PIPELINE_JOB_MAX_ITEMS"
            assert note in document[name]["description"]


@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_schema_refuses_a_payload_the_worker_would_count_over_its_limit(name: str) -> None:
    limit = 3
    schema = validator(json_schema.schemas(max_items=limit)[name])
    if BY_NAME[name].items is None:  # one row a job: no payload can go over the limit
        assert rows(name, SAMPLES[name]) == 1
        return
    at_limit, over = with_items(name, limit), with_items(name, limit + 1)
    assert rows(name, at_limit) == limit and rows(name, over) == limit + 1
    assert list(schema.iter_errors(at_limit)) == []
    assert [error.validator for error in schema.iter_errors(over)] == ["maxItems"]


def test_the_cli_takes_the_limit_from_the_worker_s_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_JOB_MAX_ITEMS", "7")
    get_settings.cache_clear()
    try:
        document = run_schema(capsys)
        one = run_schema(capsys, "--kind", "record_events")
    finally:
        get_settings.cache_clear()
    assert document["insert_nodes"]["properties"]["nodes"]["maxItems"] == 7
    assert one["properties"]["events"]["maxItems"] == 7
    assert "at most 7 items" in one["description"]
    assert document["atomic"]["$defs"]["insert_nodes"]["properties"]["nodes"]["maxItems"] == 7
    assert "PIPELINE_JOB_MAX_ITEMS, 7" in document["atomic"]["description"]


def test_a_timestamp_needs_a_zone_in_the_schema_as_in_the_worker() -> None:
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Timestamp)
    events = validator(json_schema.schemas()["record_events"])
    event = GOOD["record_events"]["events"][0]
    for text, accepted in TIMESTAMPS:
        assert (re.search(TIMESTAMP_PATTERN, text) is not None) is accepted, text
        errors = list(events.iter_errors({"events": [{**event, "occurred_at": text}]}))
        assert (errors == []) is accepted, text
        try:
            adapter.validate_python(text)
        except pydantic.ValidationError:
            assert not accepted, text
        else:
            assert accepted, text


def test_every_timestamp_of_every_schema_carries_the_pattern() -> None:
    document = json_schema.schemas()
    found = [s for schema in document.values() for s in formats(schema, "date-time")]
    assert len(found) >= 6  # heartbeat.at, transcripts, events: in their kinds and in atomic
    assert all(s["pattern"] == TIMESTAMP_PATTERN and s["type"] == "string" for s in found)
    heartbeat = validator(document["heartbeat"])
    assert list(heartbeat.iter_errors({**SAMPLES["heartbeat"], "at": BODY})) != []


def test_an_atomic_payload_is_checked_write_by_write(capsys: pytest.CaptureFixture[str]) -> None:
    document = run_schema(capsys, "--kind", "atomic")
    schema = validator(document)
    assert "commit together, or none" in document["description"]
    assert "counts the rows of every write together" in document["description"]
    assert document["properties"]["writes"]["minItems"] == 1
    writes = [{"kind": name, "args": payload} for name, payload in SAMPLES.items()]
    for good in ({"writes": writes, "urgent": True}, {"writes": writes[2:3]}):
        assert list(schema.iter_errors(good)) == []
        atomic.parts(good, 1)
    nodes = writes[2]
    assert nodes["kind"] == "insert_nodes"
    bad: list[dict[str, Any]] = [
        {"writes": []},
        {},
        {"writes": [{"kind": "nope", "args": {}}]},
        {"writes": [{"kind": "insert_nodes", "args": {"project_id": "p", "nodes": [{}]}}]},
        {"writes": [{"kind": "insert_nodes", "args": SAMPLES["heartbeat"]}]},  # another's args
        {"writes": [{"kind": "insert_nodes"}]},
        {"writes": [{**nodes, "extra": 1}]},
        {"writes": [nodes], "extra": 1},
        {"writes": [nodes], "urgent": 1},
    ]
    for payload in bad:
        assert list(schema.iter_errors(payload)) != [], payload
        with pytest.raises(InvalidPayload):
            atomic.parts(payload, 1)


def test_an_atomic_write_over_the_limit_fails_the_schema() -> None:
    schema = validator(json_schema.atomic_schema(max_items=3))
    unit = {"writes": [{"kind": "insert_nodes", "args": with_items("insert_nodes", 3)}]}
    assert list(schema.iter_errors(unit)) == []
    over = {"writes": [{"kind": "insert_nodes", "args": with_items("insert_nodes", 4)}]}
    assert list(schema.iter_errors(over)) != []


def test_the_atomic_document_holds_every_kind_and_its_refs_resolve() -> None:
    document = json_schema.atomic_schema()
    defs = document["$defs"]
    branches = document["properties"]["writes"]["items"]["oneOf"]
    assert [b["properties"]["kind"]["const"] for b in branches] == [k.name for k in KINDS]
    for branch in branches:
        name = branch["properties"]["kind"]["const"]
        assert branch["properties"]["args"] == {"$ref": f"#/$defs/{name}"}
        assert branch["required"] == ["kind", "args"] and branch["additionalProperties"] is False
        own = json_schema.schema(BY_NAME[name])
        for key, definition in own.pop("$defs", {}).items():
            assert defs[key] == definition, (name, key)
        assert {k: v for k, v in defs[name].items() if k != "description"} == {
            k: v for k, v in own.items() if k not in ("$schema", "description")
        }
    found = list(refs(document))
    assert len(found) > len(KINDS)
    for ref in found:
        target: Any = document
        assert ref.startswith("#/")
        for part in ref[2:].split("/"):
            target = target[part]
        assert isinstance(target, dict) and target, ref
    assert "$schema" not in json.dumps(defs)


def fake_kind(name: str, value: type) -> WriteKind[Any]:
    """A kind whose items are a model called ``Item`` with one field of type ``value``."""
    item = pydantic.create_model("Item", value=(value, ...))
    payload = pydantic.create_model(f"Payload_{name}", items=(list[item], ...))
    target = Target(name, "projects", (("value", "text"),), ("value",), "SELECT 1")
    return WriteKind(name, payload, target, lambda p, v: [], items="items")


def test_two_kinds_defining_one_name_differently_fail_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(json_schema, "KINDS", (fake_kind("a", int), fake_kind("b", int)))
    assert list(json_schema.atomic_schema(max_items=3)["$defs"]) == ["Item", "a", "b"]
    monkeypatch.setattr(json_schema, "KINDS", (fake_kind("a", int), fake_kind("b", str)))
    with pytest.raises(ValueError, match="'Item' of b differs from that of a"):
        json_schema.atomic_schema(max_items=3)
