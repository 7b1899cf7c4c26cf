"""Every write statement stays linear in the batch size, whatever the planner estimates.

The planner cannot know how many rows an ``unnest`` of parameters or a CTE over it yields. A
nested loop that rescans such a set for every row of another is then quadratic: one
``update_scores`` batch of 8,650 rows once took 7 s that way. The statements are written so that
batch-sized sets are only hashed, sorted or joined to a table through its index. These tests
EXPLAIN each statement (every target's and its conflicts check's, every invalidation's) with a
full batch of rows (``batch_max_rows``), through the worker's own engine (which plans each
execution for its parameters), against a ``nodes`` table of as many analyzed rows, and look for
a CTE, recursive work table or function scanned again for each row of another: on both sides of
a nested loop, or in a subplan that is not hashed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.kinds import KINDS
from pipeline.postgres import create_engine
from pipeline.settings import Settings

ROWS = Settings().batch_max_rows
SAMPLE: dict[str, Callable[[int], Any]] = {
    "text": lambda i: f"k{i}",
    "int8": lambda i: i,
    "int4": lambda i: i % 1000,
    "float8": lambda i: 0.5,
    "uuid": lambda i: uuid.UUID(int=i + 1),
    "bool": lambda i: True,
    "timestamptz": lambda i: dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
}
RESCANNABLE = {"CTE Scan", "WorkTable Scan", "Function Scan"}


def _statements() -> Iterator[tuple[str, str, dict[str, str]]]:
    """(name, SQL, column types) of every statement the write path runs."""
    targets = {kind.target.name: kind.target for kind in KINDS}.values()
    for target in targets:
        if target.lock is not None:
            yield f"{target.name}-lock", target.lock, {"scopes": "text"}
        for number, clause in enumerate(target.statements):
            yield f"{target.name}-{number}", clause.text, dict(target.columns)
        if target.conflicts_clause is not None:
            yield f"{target.name}-conflicts", target.conflicts_clause.text, dict(target.columns)
    invalidations = {t.invalidates.name: t.invalidates for t in targets if t.invalidates}
    for invalidation in invalidations.values():
        columns = dict.fromkeys(invalidation.columns, "text")
        for number, sql in enumerate(invalidation.scope + invalidation.statements):
            yield f"{invalidation.name}-{number}", sql, columns


STATEMENTS = list(_statements())


def _scans(plan: dict[str, Any]) -> Iterator[str]:
    if plan["Node Type"] in RESCANNABLE:
        yield f"{plan['Node Type']} {plan.get('Alias', '')}"
    for child in plan.get("Plans", []):
        yield from _scans(child)


def rescans(plan: dict[str, Any]) -> list[str]:
    """The batch-sized sets a plan scans again for every row of another batch-sized set."""
    found = []
    children = {child["Parent Relationship"]: child for child in plan.get("Plans", [])}
    if plan["Node Type"] == "Nested Loop" and any(_scans(children["Outer"])):
        found += [f"{scan} under a Nested Loop" for scan in _scans(children["Inner"])]
    for child in plan.get("Plans", []):
        if child["Parent Relationship"] == "SubPlan" and not child.get(
            "Subplan Name", ""
        ).startswith("hashed"):
            found += [f"{scan} in a SubPlan" for scan in _scans(child)]
        found += rescans(child)
    return found


def positional(sql: str) -> tuple[str, list[str]]:
    """The statement with ``:name`` parameters as ``$n``, and the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"(?<!:):([a-z_]+)", number, sql), names


@pytest.fixture(scope="module")
async def writer(module_database_url: str) -> AsyncIterator[AsyncEngine]:
    """The worker's engine, on a database whose ``nodes`` hold the batch's keys, analyzed.

    One database for the module: EXPLAIN writes nothing, and filling it takes long.
    """
    engine = create_engine(Settings(database_url=module_database_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO projects (project_id, name) VALUES ('p', 'p')"))
            await conn.execute(
                text(
                    "INSERT INTO nodes (project_id, node_id, label) "
                    "SELECT 'p', 'k' || g, 'x' FROM generate_series(0, :n - 1) AS g"
                ),
                {"n": ROWS},
            )
            await conn.execute(text("ANALYZE"))
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("sql", "types"), [s[1:] for s in STATEMENTS], ids=[s[0] for s in STATEMENTS]
)
async def test_no_statement_scans_a_batch_sized_set_once_per_row(
    writer: AsyncEngine, sql: str, types: dict[str, str]
) -> None:
    statement, names = positional(sql)
    # One project per batch, as producers send them; every other value differs per row.
    args = [
        ["p"] * ROWS if name == "project_id" else [SAMPLE[types[name]](i) for i in range(ROWS)]
        for name in names
    ]
    async with writer.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        plan = await raw.fetchval(f"EXPLAIN (FORMAT JSON) {statement}", *args)
    # The engine's connections decode json already; a bare asyncpg one would not.
    tree = json.loads(plan) if isinstance(plan, str) else plan
    assert not rescans(tree[0]["Plan"])


def test_the_check_sees_a_rescan_below_a_join() -> None:
    def node(kind: str, relation: str, *plans: dict[str, Any], **more: str) -> dict[str, Any]:
        return {"Node Type": kind, "Parent Relationship": relation, "Plans": list(plans), **more}

    def cte(relation: str) -> dict[str, Any]:
        return node("CTE Scan", relation, Alias="v")

    table = node("Seq Scan", "Inner")
    below_a_join = node(
        "Hash Join", "Inner", {**table, "Parent Relationship": "Outer"}, cte("Inner")
    )
    assert rescans(node("Nested Loop", "", cte("Outer"), below_a_join)) == [
        "CTE Scan v under a Nested Loop"
    ]
    # A table on the outer side: how often the inner side runs is the table's size, not the batch's.
    assert (
        rescans(node("Nested Loop", "", {**table, "Parent Relationship": "Outer"}, cte("Inner")))
        == []
    )
    assert rescans(node("Result", "", cte("SubPlan"))) == ["CTE Scan v in a SubPlan"]
    hashed = node("Result", "", {**cte("SubPlan"), "Subplan Name": "hashed SubPlan 1"})
    assert rescans(hashed) == []
