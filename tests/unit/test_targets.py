"""Merging and sorting rows of a target, the payload models' validation, and the targets'
contract with the schema: their tables, columns, keys and foreign-key order."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError
from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Integer,
    SmallInteger,
    String,
    Uuid,
)
from sqlalchemy.types import TypeEngine

from pipeline.kinds import BY_NAME, KINDS, Target
from pipeline.kinds.base import newest
from pipeline.kinds.nodes import NODE_UPDATES, NODES
from pipeline.kinds.projects import PROJECTS
from pipeline.schema import metadata

TARGETS: list[Target] = list({id(kind.target): kind.target for kind in KINDS}.values())
#: The order a batch writes its targets in (see the test that pins it).
ORDER = [
    "claims",
    "consensus_decisions",
    "events",
    "model_checkpoints",
    "checkpoint_activations",
    "projects",
    "service_health",
    "training_data",
    "training_used",
    "transcripts",
    "verification_results",
    "nodes",
    "node_updates",
    "rubrics",
    "labeled_samples",
    "principle_scores",
]

#: Columns a target sends that are not columns of its table: inputs its statement computes from.
COMPUTED: dict[tuple[str, str], str] = {
    ("rubrics", "principles"): "the version's principles as JSON, inserted into rubric_principles",
    ("node_updates", "rubric_version"): "the version of rubric_score (rubric_score_version)",
    ("node_updates", "ucb_version"): "the version of ucb_score (ucb_score_version)",
    ("node_updates", "actor"): "the audit actor, handed to the audit trigger",
    ("node_updates", "detail"): "asks the statement which fields of a merged row applied",
    ("principle_scores", "principle"): "the principle's name, resolved to its principle_id",
    ("claims", "actor"): "the audit actor, handed to the audit trigger",
    ("consensus_decisions", "actor"): "the audit actor, handed to the audit trigger",
    ("checkpoint_activations", "actor"): "the audit actor, handed to the audit trigger",
}
#: Columns sent in a type other than their table's, converted by the target's statement.
CONVERTED: dict[tuple[str, str], str] = {
    ("consensus_decisions", "participating_frameworks"): "a JSON array: unnest cannot carry arrays",
}


def sent_types(column: TypeEngine[object]) -> set[str]:
    """The array element types a target may send for a column of this SQLAlchemy type."""
    if isinstance(column, ARRAY):
        return {f"{t}[]" for t in sent_types(column.item_type)}
    if isinstance(column, JSON):
        return {"jsonb", "text"}  # JSON travels as text; the statement casts it to jsonb
    if isinstance(column, Uuid):
        return {"uuid"}
    if isinstance(column, DateTime):
        return {"timestamptz", "timestamp with time zone"} if column.timezone else {"timestamp"}
    if isinstance(column, BigInteger):
        return {"int8", "bigint"}
    if isinstance(column, SmallInteger):
        return {"int2", "smallint"}
    if isinstance(column, Integer):
        return {"int4", "integer"}
    if isinstance(column, Double):
        return {"float8", "double precision"}
    if isinstance(column, Boolean):
        return {"bool", "boolean"}
    if isinstance(column, String):
        return {"text"}
    raise AssertionError(f"no rule for a column of type {column!r}")


def referenced(table: str) -> set[str]:
    """Every table that ``table`` references by a foreign key, directly or through others."""
    found: set[str] = set()
    todo = [table]
    while todo:
        for fk in metadata.tables[todo.pop()].foreign_keys:
            parent = fk.column.table.name
            if parent != table and parent not in found:
                found.add(parent)
                todo.append(parent)
    return found


def test_every_target_writes_a_table_of_the_schema() -> None:
    assert {t.table for t in TARGETS} <= set(metadata.tables)


def test_the_target_of_a_referenced_table_sorts_first() -> None:
    pairs = [
        (parent, child)
        for parent, child in itertools.permutations(TARGETS, 2)
        if parent.table in referenced(child.table)
    ]
    assert ("projects", "nodes") in {(p.name, c.name) for p, c in pairs}
    for parent, child in pairs:
        assert parent.order < child.order, f"{child.name} sorts before its parent {parent.name}"


def test_a_target_sorts_after_the_one_it_follows() -> None:
    followers = [t for t in TARGETS if t.follows is not None]
    assert {(t.follows.name, t.name) for t in followers if t.follows} >= {
        ("nodes", "node_updates"),
        ("model_checkpoints", "checkpoint_activations"),
        ("training_data", "training_used"),
    }
    for target in followers:
        assert target.follows is not None and target.follows.order < target.order


def test_the_order_of_a_batch_changes_only_on_purpose() -> None:
    """Workers of two versions that write unrelated tables in different orders can deadlock each
    other while a deploy rolls out (PostgreSQL breaks it; the batch is retried as transient):
    the order the schema gives is pinned here, to change only with a schema change."""
    assert [t.name for t in sorted(TARGETS, key=lambda t: t.order)] == ORDER, (
        "the batch order changed: say so in CHANGELOG.md, then update ORDER"
    )


def test_every_column_a_target_sends_is_a_column_of_its_table_of_a_matching_type() -> None:
    for target in TARGETS:
        table = metadata.tables[target.table]
        for name, pg in target.columns:
            where = f"{target.name}.{name}"
            if (target.name, name) in COMPUTED:
                assert name not in table.c, f"{where} is a column now: not an exception"
                continue
            assert name in table.c, f"{where} is not a column of {target.table}"
            if (target.name, name) in CONVERTED:
                continue
            expected = sent_types(table.c[name].type)
            assert pg in expected, f"{where} is sent as {pg}, the table has {table.c[name].type}"
    names = {(t.name, name) for t in TARGETS for name, _ in t.columns}
    assert set(COMPUTED) | set(CONVERTED) <= names, "an exception names no column sent"


def test_every_key_column_is_a_column_of_its_target() -> None:
    for target in TARGETS:
        assert set(target.key) <= {name for name, _ in target.columns}, target.name


def test_a_target_names_its_merge_column_table_and_predecessor_or_fails_at_once() -> None:
    columns = (("k", "text"), ("v", "int8"))
    with pytest.raises(ValueError, match=r"^t: 'nope' is not one of its columns"):
        Target("t", "projects", columns, ("k",), "SELECT 1", merge=newest("nope"))
    with pytest.raises(ValueError, match=r"^t: 'nope' is not one of its columns"):
        Target("t", "projects", columns, ("nope",), "SELECT 1")
    with pytest.raises(ValueError, match=r"^t: table 'nope' is not in the schema"):
        Target("t", "nope", columns, ("k",), "SELECT 1")
    with pytest.raises(ValueError, match=r"^t: follows a target of another table"):
        Target("t", "projects", columns, ("k",), "SELECT 1", follows=NODES)
    target = Target("t", "projects", columns, ("k",), "SELECT 1", merge=newest("v"))
    assert target.merged_rows([("a", 2), ("a", 3), ("a", 1)]) == [("a", 3)]


def test_last_write_wins_keeps_the_highest_version_per_key_and_sorts() -> None:
    rows = [
        ("b", "B2", "{}", 2),
        ("a", "A1", "{}", 1),
        ("b", "B5", "{}", 5),
        ("b", "B3", "{}", 3),
    ]
    assert PROJECTS.merged_rows(rows) == [("a", "A1", "{}", 1), ("b", "B5", "{}", 5)]


def test_node_saves_keep_the_newest_definition_and_the_first_of_a_tie() -> None:
    first = ("p", "n", None, "first", None, "alive", 0, "{}", 5)
    newer = ("p", "n", "r", "newer", None, "alive", 0, "{}", 9)
    tie = ("p", "n", None, "tie", None, "alive", 0, "{}", 9)
    assert NODES.merged_rows([first, newer, tie]) == [newer]


def test_node_updates_merge_each_field_by_its_own_version() -> None:
    rubric_v2 = ("p", "n", 0.2, 2, None, None, None, None, None, False)
    ucb_v1 = ("p", "n", None, None, 9.0, 1, None, None, None, False)
    rubric_v1 = ("p", "n", 0.1, 1, None, None, None, None, None, False)
    status_v3 = ("p", "n", None, None, None, None, "pruned", 3, "ops", False)
    prepared = NODE_UPDATES.prepare([[rubric_v2], [ucb_v1, rubric_v1], [status_v3]])
    # Merged from several rows: the statement is asked which fields applied.
    assert prepared.rows == [("p", "n", 0.2, 2, 9.0, 1, "pruned", 3, "ops", True)]
    assert prepared.collided
    written = prepared.rows[0]
    sent = [rubric_v2, ucb_v1, rubric_v1, status_v3]
    assert [NODE_UPDATES.credited(r, written, 0b111) for r in sent] == [True, True, False, True]
    # The statement said only the status applied (the scores were stale in the table).
    assert [NODE_UPDATES.credited(r, written, 0b100) for r in sent] == [False, False, False, True]


def test_a_node_update_with_every_newest_field_stands_as_sent() -> None:
    old = ("p", "n", 0.1, 1, 1.0, 1, None, None, None, False)
    new = ("p", "n", 0.2, 2, 2.0, 2, None, None, None, False)
    prepared = NODE_UPDATES.prepare([[old], [new]])
    assert prepared.rows[0] is new  # no detail asked: the row written is the newer one
    assert [NODE_UPDATES.credited(r, new, None) for r in (old, new)] == [False, True]


def test_score_rows_carry_a_version_only_for_the_scores_given() -> None:
    kind = BY_NAME["update_scores"]
    payload = kind.validate({"project_id": "p", "scores": [{"node_id": "n", "ucb_score": 1.5}]})
    assert kind.rows(payload, 77) == [("p", "n", None, None, 1.5, 77, None, None, None, False)]


def test_a_null_score_clears_it_at_its_version() -> None:
    kind = BY_NAME["update_scores"]
    payload = kind.validate(
        {"project_id": "p", "scores": [{"node_id": "n", "ucb_score": None, "version": 5}]}
    )
    assert kind.rows(payload, 77) == [("p", "n", None, None, None, 5, None, None, None, False)]


@pytest.mark.parametrize(
    ("function", "payload", "message"),
    [
        ("update_scores", {"project_id": "p", "scores": []}, "at least 1 item"),
        ("update_scores", {"project_id": "p", "scores": [{"node_id": "n"}]}, "needs rubric_score"),
        (
            "update_scores",
            {"project_id": "p", "scores": [{"node_id": "n", "rubric_score": float("nan")}]},
            "finite number",
        ),
        (
            "update_statuses",
            {"project_id": "p", "statuses": [{"node_id": "n", "status": "x"}]},
            "'alive'",
        ),
        ("insert_nodes", {"project_id": "p\x00", "nodes": [{"node_id": "n", "label": "l"}]}, "NUL"),
        ("insert_nodes", {"project_id": "p", "nodes": [{"node_id": "n"}]}, "label"),
        ("upsert_project", {"project_id": "p", "name": "n", "extra": 1}, "Extra inputs"),
        (
            "save_rubric",
            {
                "project_id": "p",
                "rubric_id": "r",
                "version": 1,
                "principles": [{"name": "a"}, {"name": "a"}],
            },
            "unique",
        ),
        (
            "save_labeled_samples",
            {
                "project_id": "p",
                "samples": [{"sample_id": "not-a-uuid", "node_id": "n", "label": "x"}],
            },
            "UUID",
        ),
    ],
)
def test_invalid_payloads_are_rejected_with_a_clear_message(
    function: str, payload: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        BY_NAME[function].validate(payload)


def test_no_target_follows_one_that_hands_the_audit_actors_for_its_table() -> None:
    """The audit trigger reads a transaction-local setting that the last actor-carrying target
    of a table set: a later statement on that table in the same batch would inherit it."""
    targets = sorted(TARGETS, key=lambda t: t.order)
    for i, target in enumerate(targets):
        if target.actors is None:
            continue
        later = [t.name for t in targets[i + 1 :] if t.table == target.table]
        assert later == [], f"{later} run after {target.name} on {target.table}"
