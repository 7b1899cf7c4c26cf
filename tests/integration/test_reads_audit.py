"""The audit read repository against real PostgreSQL.

Rows are written with plain Core inserts, never through the write path.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from pipeline.reads import AuditReads
from pipeline.schema import metadata

AUDIT_LOG = metadata.tables["audit_log"]
T0 = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)


def audit_row(entity_type: str, entity_id: str, n: int, created_at: dt.datetime) -> dict[str, Any]:
    """An audit_log row recording the ``n``-th status change of an entity."""
    return {
        "entity_type": entity_type,
        "entity_id": entity_id,
        "action": "status",
        "changes": {"n": n},
        "actor": f"actor-{n}" if n % 2 else None,
        "created_at": created_at,
    }


async def insert_one_by_one(engine: AsyncEngine, rows: list[dict[str, Any]]) -> list[int]:
    """Insert rows one statement at a time, so their ids follow the list; return the ids."""
    ids = []
    async with engine.begin() as conn:
        for row in rows:
            ids.append(await conn.scalar(insert(AUDIT_LOG).values(row).returning(AUDIT_LOG.c.id)))
    return ids


async def test_trail_in_the_order_written(engine: AsyncEngine) -> None:
    rows = []
    for n in range(60):
        # created_at runs backwards, so ordering by it instead of id would reverse the trail.
        rows.append(audit_row("node", "p/n-1", n, T0 - n * dt.timedelta(seconds=1)))
        rows.append(audit_row("node", "p/n-2", n, T0))
        rows.append(audit_row("rubric", "p/n-1", n, T0))
    ids = await insert_one_by_one(engine, rows)
    mine = [
        i
        for i, row in zip(ids, rows, strict=True)
        if (row["entity_type"], row["entity_id"]) == ("node", "p/n-1")
    ]
    reads = AuditReads(engine)

    trail = await reads.trail("node", "p/n-1")
    assert [e.id for e in trail] == mine
    assert [e.changes for e in trail] == [{"n": n} for n in range(60)]
    assert all((e.entity_type, e.entity_id, e.action) == ("node", "p/n-1", "status") for e in trail)
    assert [e.actor for e in trail[:3]] == [None, "actor-1", None]
    assert trail[5].created_at == T0 - 5 * dt.timedelta(seconds=1)

    first = await reads.trail("node", "p/n-1", limit=25)
    second = await reads.trail("node", "p/n-1", limit=25, after_id=first[-1].id)
    third = await reads.trail("node", "p/n-1", limit=25, after_id=second[-1].id)
    assert [len(first), len(second), len(third)] == [25, 25, 10]
    assert [e.id for e in first + second + third] == mine
    assert await reads.trail("node", "p/n-1", after_id=mine[-1]) == []
    assert [e.changes["n"] for e in await reads.trail("rubric", "p/n-1", limit=3)] == [0, 1, 2]
    assert await reads.trail("node", "no-such-node") == []
    with pytest.raises(ValueError):
        await reads.trail("node", "p/n-1", limit=0)


async def test_trail_over_a_session_sees_its_uncommitted_writes(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        await session.execute(insert(AUDIT_LOG), [audit_row("node", "p/n", 1, T0)])
        trail = await AuditReads(session).trail("node", "p/n")
        assert [e.changes for e in trail] == [{"n": 1}]
        await session.rollback()
    assert await AuditReads(engine).trail("node", "p/n") == []
