"""Payload validation is strict (a boolean is no number, a number no timestamp), and JSON fields
nest at most ``JSON_MAX_DEPTH`` levels, measured without recursion."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.errors import InvalidPayload
from pipeline.kinds import BY_NAME, KINDS
from pipeline.kinds.fields import _iso_timestamp
from pipeline.nesting import JSON_MAX_DEPTH, deeper_than

EVENT = {
    "event_id": "00000000-0000-0000-0000-000000000001",
    "event_type": "x",
    "occurred_at": "2026-01-02T03:04:05+00:00",
}
TRANSCRIPT = {
    "task_id": "t",
    "phase": "p",
    "iteration": 0,
    "seq": 0,
    "role": "chunk",
    "content": "c",
    "timestamp": "2026-01-02T03:04:05Z",
}
VERIFICATION = {
    "result_id": "00000000-0000-0000-0000-000000000002",
    "claim_id": "c",
    "framework": "f",
    "result": {},
    "confidence": 0.5,
}


def deep_metadata(levels: int) -> dict[str, Any]:
    """A JSON object nested ``levels`` deep (itself is level 1)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def parse(function: str, **payload: Any) -> Any:
    return BY_NAME[function].parse(payload)


def test_deeper_than_counts_levels_without_recursion() -> None:
    assert not deeper_than("x", 0)
    assert deeper_than([], 0) and not deeper_than([], 1)
    assert not deeper_than({"a": [1, {"b": ()}], "c": 2}, 4)
    assert deeper_than({"a": [1, {"b": ()}], "c": 2}, 3)
    assert deeper_than(deep_metadata(100_000), 99_999)  # far past any recursion limit
    assert not deeper_than(deep_metadata(100_000), 100_000)


def test_json_fields_nest_at_most_the_limit() -> None:
    node = {"node_id": "n", "label": "n"}
    parse(
        "insert_nodes", project_id="p", nodes=[{**node, "metadata": deep_metadata(JSON_MAX_DEPTH)}]
    )
    for levels in (JSON_MAX_DEPTH + 1, 990, 5000):
        with pytest.raises(InvalidPayload) as refused:
            parse(
                "insert_nodes", project_id="p", nodes=[{**node, "metadata": deep_metadata(levels)}]
            )
        assert str(refused.value) == (
            "insert_nodes: nodes.0.metadata: "
            f"Value error, JSON must not nest deeper than {JSON_MAX_DEPTH} levels"
        )
    with pytest.raises(
        InvalidPayload, match=r"events\.0\.payload: Value error, JSON must not nest"
    ):
        parse(
            "record_events", events=[{**EVENT, "payload": {"a": [deep_metadata(JSON_MAX_DEPTH)]}}]
        )


@pytest.mark.parametrize(
    ("function", "payload", "where"),
    [
        (
            "update_scores",
            {"project_id": "p", "scores": [{"node_id": "n", "ucb_score": True}]},
            "scores.0.ucb_score",
        ),
        (
            "update_scores",
            {"project_id": "p", "scores": [{"node_id": "n", "rubric_score": "0.5"}]},
            "scores.0.rubric_score",
        ),
        (
            "update_scores",
            {"project_id": "p", "scores": [{"node_id": "n", "ucb_score": 1.0, "version": True}]},
            "scores.0.version",
        ),
        (
            "update_statuses",
            {"project_id": "p", "statuses": [{"node_id": "n", "status": "alive", "version": "7"}]},
            "statuses.0.version",
        ),
        (
            "record_verifications",
            {"results": [{**VERIFICATION, "confidence": True}]},
            "results.0.confidence",
        ),
        (
            "record_verifications",
            {"results": [{**VERIFICATION, "processing_time_ms": False}]},
            "results.0.processing_time_ms",
        ),
        (
            "save_principle_scores",
            {
                "project_id": "p",
                "scores": [
                    {
                        "node_id": "n",
                        "rubric_id": "r",
                        "rubric_version": True,
                        "principle": "x",
                        "score": 1,
                    }
                ],
            },
            "scores.0.rubric_version",
        ),
        (
            "save_rubric",
            {
                "project_id": "p",
                "rubric_id": "r",
                "version": 1,
                "principles": [{"name": "x", "weight": True}],
            },
            "principles.0.weight",
        ),
        ("append_transcripts", {"transcripts": [{**TRANSCRIPT, "seq": 2.0}]}, "transcripts.0.seq"),
        ("record_events", {"events": [EVENT], "urgent": 1}, "urgent"),
        ("upsert_project", {"project_id": "p", "name": "n", "version": True}, "version"),
    ],
)
def test_booleans_are_not_numbers_nor_numbers_booleans(
    function: str, payload: dict[str, Any], where: str
) -> None:
    with pytest.raises(InvalidPayload) as refused:
        BY_NAME[function].parse(payload)
    assert str(refused.value).startswith(f"{function}: {where}: Input should be a valid ")


@pytest.mark.parametrize("when", [1_767_225_600, 1_767_225_600.5, True, "1767225600", "2026-01-02"])
@pytest.mark.parametrize(
    ("function", "payload", "where"),
    [
        (
            "append_transcripts",
            lambda t: {"transcripts": [{**TRANSCRIPT, "timestamp": t}]},
            "transcripts.0.timestamp",
        ),
        (
            "record_events",
            lambda t: {"events": [{**EVENT, "occurred_at": t}]},
            "events.0.occurred_at",
        ),
        (
            "heartbeat",
            lambda t: {"service": "s", "instance_id": "i", "status": "ok", "at": t},
            "at",
        ),
    ],
)
def test_only_iso_8601_with_a_zone_is_a_timestamp(
    function: str, payload: Any, where: str, when: Any
) -> None:
    with pytest.raises(InvalidPayload) as refused:
        BY_NAME[function].parse(payload(when))
    assert str(refused.value).startswith(f"{function}: {where}: ")


def test_what_strict_validation_still_accepts() -> None:
    scores = parse("update_scores", project_id="p", scores=[{"node_id": "n", "ucb_score": 1}])
    assert scores.scores[0]["ucb_score"] == 1.0
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    for sent in ("2026-01-02T03:04:05Z", "2026-01-02T04:04:05+01:00", at):
        events = parse("record_events", events=[{**EVENT, "occurred_at": sent}], urgent=True)
        assert events.events[0].occurred_at == at and events.urgent is True


def _schemas(schema: Any, parent: Any = None) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every schema node of a pydantic core schema, with the node it sits in."""
    if isinstance(schema, dict):
        if "type" in schema:
            yield schema, parent
        for value in schema.values():
            yield from _schemas(value, schema if "type" in schema else parent)
    elif isinstance(schema, list):
        for value in schema:
            yield from _schemas(value, parent)


def test_every_number_boolean_and_timestamp_of_every_kind_is_strict() -> None:
    seen = set()
    for kind in KINDS:
        for node, parent in _schemas(kind.adapter.core_schema):
            if node["type"] in {"int", "float", "bool"}:
                assert node.get("strict") is True, (kind.name, node)
            if node["type"] == "datetime":
                assert parent["type"] == "function-before", (kind.name, parent)
                assert parent["function"]["function"] is _iso_timestamp
            seen.add(node["type"])
    assert seen >= {"int", "float", "bool", "datetime"}
