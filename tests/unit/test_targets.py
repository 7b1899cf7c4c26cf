"""Merging and sorting rows of a target, and the payload models' validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.kinds import BY_NAME
from pipeline.kinds.nodes import NODE_UPDATES, NODES
from pipeline.kinds.projects import PROJECTS


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
    unique = {id(kind.target): kind.target for kind in BY_NAME.values()}
    targets = sorted(unique.values(), key=lambda t: t.order)
    for i, target in enumerate(targets):
        if target.actors is None:
            continue
        later = [t.name for t in targets[i + 1 :] if t.table == target.table]
        assert later == [], f"{later} run after {target.name} on {target.table}"
