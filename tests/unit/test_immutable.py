"""Immutable targets without a database: two rows of one key merge only when they are the same
definition, JSON compared as ``jsonb`` compares it; otherwise the batch raises a Conflict."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from pipeline.errors import Conflict, DataError
from pipeline.kinds import BY_NAME, KINDS
from pipeline.kinds.agent_tasks import EVENTS, TRANSCRIPTS
from pipeline.kinds.base import Row, Target, keep_first, newest, same_json
from pipeline.kinds.rubrics import RUBRICS

IMMUTABLE = {
    "rubrics",
    "principle_scores",
    "labeled_samples",
    "verification_results",
    "training_data",
    "model_checkpoints",
    "transcripts",
    "events",
}


def rubric_rows(version: int, *principles: str, weight: float = 1.0) -> list[Row]:
    kind = BY_NAME["save_rubric"]
    payload = kind.validate(
        {
            "project_id": "p",
            "rubric_id": "r",
            "version": version,
            "principles": [{"name": n, "weight": weight} for n in principles],
        }
    )
    return kind.rows(payload, 0)


def event_row(payload: str, at: dt.datetime | None = None) -> Row:
    at = at or dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (uuid.UUID(int=7), None, "t", payload, at, None)


def test_a_rubric_version_is_one_row_carrying_its_principles_in_order() -> None:
    [row] = rubric_rows(3, "beta", "alpha")
    assert row[:3] == ("p", "r", 3)
    assert RUBRICS.key_of(row) == ("p", "r", 3)
    assert '"name":"beta"' in row[3] and row[3].index("beta") < row[3].index("alpha")


def test_two_definitions_of_one_rubric_version_conflict_in_a_batch() -> None:
    first, later = rubric_rows(1, "alpha"), rubric_rows(1, "beta", "gamma")
    with pytest.raises(Conflict, match=r"rubrics \(project_id=p, rubric_id=r, version=1\)") as e:
        RUBRICS.merged_rows(first + later)
    assert "differs in principles" in str(e.value)
    assert isinstance(e.value, DataError)  # so the coalescer isolates the job that sent it
    with pytest.raises(Conflict):  # same names, another weight
        RUBRICS.merged_rows(first + rubric_rows(1, "alpha", weight=2.0))
    with pytest.raises(Conflict):  # same principles, another order
        RUBRICS.merged_rows(rubric_rows(1, "a", "b") + rubric_rows(1, "b", "a"))


def test_the_same_definition_twice_is_one_row_and_other_keys_are_untouched() -> None:
    rows = rubric_rows(2, "x") + rubric_rows(1, "a", "b") + rubric_rows(1, "a", "b")
    assert RUBRICS.merged_rows(rows) == rubric_rows(1, "a", "b") + rubric_rows(2, "x")


def test_json_columns_compare_as_jsonb_does() -> None:
    same = [event_row('{"a":1,"b":[true,null]}'), event_row('{"b":[true,null],"a":1.0}')]
    assert EVENTS.merged_rows(same) == same[:1]
    for other in ('{"a":true,"b":[true,null]}', '{"a":1,"b":[null,true]}', '{"a":1}'):
        with pytest.raises(Conflict, match=r"event_id=00000000-0000-0000-0000-000000000007"):
            EVENTS.merged_rows([same[0], event_row(other)])


def test_only_the_columns_that_differ_are_named() -> None:
    later = event_row('{"a":2}', dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    assert EVENTS.differences(event_row('{"a":1}'), later) == ["payload", "occurred_at"]
    # The same instant in another time zone is the same timestamp, as in timestamptz.
    cet = dt.timezone(dt.timedelta(hours=1))
    assert (
        EVENTS.differences(event_row("{}"), event_row("{}", dt.datetime(2026, 1, 1, 1, tzinfo=cet)))
        == []
    )
    # A text column is never compared as JSON.
    row = ("t", "plan", 0, 0, "response", "1", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert TRANSCRIPTS.differences(row, row[:5] + ("1.0",) + row[6:]) == ["content"]


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ({"x": 1, "y": 2}, {"y": 2, "x": 1}, True),
        (1, 1.0, True),
        (True, 1, False),
        (False, 0, False),
        (None, None, True),
        ([1, 2], [2, 1], False),
        ({"x": [1, {"y": True}]}, {"x": [1.0, {"y": True}]}, True),
        ({"x": 1}, {"x": 1, "y": None}, False),
        ("1", 1, False),
    ],
)
def test_same_json(a: Any, b: Any, equal: bool) -> None:
    assert same_json(a, b) is equal
    assert same_json(b, a) is equal


def test_the_stored_conflict_names_the_first_key_and_counts_the_others() -> None:
    error = RUBRICS.conflict({("p", "r", 2): "x differ", ("p", "r", 1): "principles differ"})
    assert str(error) == (
        "rubrics (project_id=p, rubric_id=r, version=1): a different definition is already "
        "written (principles differ) (and 1 more); the first stands"
    )


def test_every_insert_if_absent_target_of_a_definition_is_immutable() -> None:
    targets = {kind.target.name: kind.target for kind in KINDS}
    assert {name for name, t in targets.items() if t.immutable} == IMMUTABLE
    for name in IMMUTABLE:
        assert targets[name].conflicts_clause is not None and targets[name].reports


def test_an_immutable_target_must_keep_the_first_and_report() -> None:
    def target(**options: Any) -> Target:
        base: dict[str, Any] = {
            "name": "t",
            "table": "projects",
            "columns": (("k", "text"), ("v", "text")),
            "key": ("k",),
            "sql": "SELECT 1",
            "reports": True,
            "immutable": True,
        }
        return Target(**{**base, **options})

    assert target().row_merge != keep_first
    assert "t.v IS DISTINCT FROM v.v" in str(target().conflicts_clause)
    with pytest.raises(ValueError, match="keeps the first"):
        target(merge=newest("v"))
    with pytest.raises(ValueError, match="reports"):
        target(reports=False)
    with pytest.raises(ValueError, match="only an immutable"):
        target(immutable=False, conflicts="SELECT 1")
    with pytest.raises(ValueError, match="not columns"):
        target(json_columns=("nope",))
