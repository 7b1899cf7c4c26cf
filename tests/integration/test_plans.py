"""Every write statement stays linear in the batch size, whatever the planner estimates.

The planner cannot know how many rows an ``unnest`` of parameters or a CTE over it yields; it
guesses (a handful for a generic plan). A nested loop that rescans such a CTE for every row of
another is then quadratic: one ``update_scores`` batch of 8,650 rows once took 7 s that way. The
statements are written so that batch-sized sets are only hashed, sorted or joined to a table
through its index; these tests EXPLAIN each one, as a custom and as a generic plan, and look
for a nested loop whose inner side scans a CTE, a recursive work table or a function.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.kinds import KINDS, Target

ROWS = 20_000
SAMPLE: dict[str, Callable[[int], Any]] = {
    "text": lambda i: f"k{i}",
    "int8": lambda i: i,
    "int4": lambda i: i % 1000,
    "float8": lambda i: 0.5,
    "uuid": lambda i: uuid.UUID(int=i + 1),
    "bool": lambda i: True,
    "timestamptz": lambda i: dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
}
RESCANNED = {"CTE Scan", "WorkTable Scan", "Function Scan"}
PASS_THROUGH = {"Materialize", "Hash", "Sort", "Subquery Scan"}
TARGETS = list({kind.target.name: kind.target for kind in KINDS}.values())


def quadratic_joins(plan: dict[str, Any]) -> list[str]:
    """The nested loops of a plan that rescan a CTE, work table or function for each row."""
    found = []
    if plan["Node Type"] == "Nested Loop":
        inner = plan["Plans"][1]
        while inner["Node Type"] in PASS_THROUGH:
            inner = inner["Plans"][0]
        if inner["Node Type"] in RESCANNED:
            found.append(f"Nested Loop over {inner['Node Type']} {inner.get('Alias', '')}")
    for child in plan.get("Plans", []):
        found += quadratic_joins(child)
    return found


def positional(sql: str) -> tuple[str, list[str]]:
    """The statement with ``:name`` parameters as ``$n``, and the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"(?<!:):([a-z_]+)", number, sql), names


def array_literal(values: list[Any]) -> str:
    return "$a${" + ",".join(f'"{v}"' for v in values) + "}$a$"


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
async def test_no_statement_joins_batch_sized_sets_in_a_nested_loop(
    engine: AsyncEngine, target: Target
) -> None:
    columns = {name: [SAMPLE[pg](i) for i in range(ROWS)] for name, pg in target.columns}
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        for number, statement in enumerate(target.statements):
            sql, names = positional(statement.text)
            args = [columns[name] for name in names]
            async with raw.transaction():
                custom = await raw.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
                await raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                await raw.execute(f"PREPARE statement AS {sql}")
                literals = ", ".join(array_literal(a) for a in args)
                generic = await raw.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE statement({literals})")
                await raw.execute("DEALLOCATE statement")
            for kind, plan in (("custom", custom), ("generic", generic)):
                # The engine's connections decode json already; a bare asyncpg one would not.
                tree = json.loads(plan) if isinstance(plan, str) else plan
                found = quadratic_joins(tree[0]["Plan"])
                assert not found, f"{target.name} statement {number}, {kind} plan: {found}"
