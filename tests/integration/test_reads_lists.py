"""The list reads (claims by type, a training batch, a model's checkpoints, live services,
events of several types) against real PostgreSQL: every page walked, against Python's answer.

Rows are written with plain Core inserts, never through the write path. Timestamps come from a
handful of values, so ties (broken by id) are everywhere.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tree_factory import count_statements, insert_rows

from pipeline.reads import Page, TaskReads, VerificationReads
from pipeline.schema import metadata

T0 = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
TYPES = ("factual", "opinion", "numeric")
MINUTE = dt.timedelta(minutes=1)


async def walk(
    read: Callable[..., Awaitable[Page[Any, Any]]], cursor_name: str, *args: Any, **kwargs: Any
) -> list[Any]:
    """Every item of every page of ``read(*args, **kwargs)``, passing each page's cursor back
    as ``cursor_name``."""
    items: list[Any] = []
    cursor = None
    while True:
        page = await read(*args, **kwargs, **{cursor_name: cursor})
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor


def _at(rng: random.Random) -> dt.datetime:
    return T0 + rng.randint(0, 4) * MINUTE


async def test_claims_by_type_newest_first_across_pages(engine: AsyncEngine) -> None:
    rng = random.Random(1)
    rows = [
        {
            "id": uuid.uuid4(),
            "external_id": f"c-{n}",
            "content": f"claim {n}",
            "claim_type": rng.choice((*TYPES, None)),
            "created_at": _at(rng),
        }
        for n in range(300)
    ]
    await insert_rows(engine, metadata.tables["claims"], rows)
    reads = VerificationReads(engine)
    for claim_type in (*TYPES, "none-such"):
        for limit in (1, 7, 500):
            got = await walk(reads.claims_by_type, "before", claim_type, limit)
            expected = sorted(
                (r for r in rows if r["claim_type"] == claim_type),
                key=lambda r: (r["created_at"], r["id"]),
                reverse=True,
            )
            assert [(c.external_id, c.created_at) for c in got] == [
                (r["external_id"], r["created_at"]) for r in expected
            ]
    with pytest.raises(ValueError):
        await reads.claims_by_type("factual", 0)


async def test_a_training_batch_oldest_first_across_pages(engine: AsyncEngine) -> None:
    rng = random.Random(2)
    rows = [
        {
            "id": uuid.uuid4(),
            "framework": rng.choice(("fever", "scifact")),
            "claim_text": f"text {n}",
            "validity": rng.random() < 0.5,
            "used_in_training": True,
            "training_batch_id": rng.choice(("b1", "b2", "b3", None)),
            "created_at": _at(rng),
        }
        for n in range(250)
    ]
    await insert_rows(engine, metadata.tables["training_data"], rows)
    reads = VerificationReads(engine)
    for batch in ("b1", "b2", "b3", "none-such"):
        got = await walk(reads.training_batch, "after", batch, 9)
        expected = sorted(
            (r for r in rows if r["training_batch_id"] == batch),
            key=lambda r: (r["created_at"], r["id"]),
        )
        assert [e.id for e in got] == [r["id"] for r in expected]
        assert all(e.training_batch_id == batch for e in got)


async def test_every_checkpoint_of_a_model_newest_first(engine: AsyncEngine) -> None:
    rng = random.Random(3)
    rows = [
        {
            "id": uuid.uuid4(),
            "model_name": model,
            "framework": rng.choice(("fever", None)),
            "version": f"v{n}",
            "checkpoint_path": f"/ckpt/{model}/{n}",
            "is_active": False,
            "created_at": _at(rng),
        }
        for model in ("verifier", "ranker")
        for n in range(40)
    ]
    await insert_rows(engine, metadata.tables["model_checkpoints"], rows)
    reads = VerificationReads(engine)
    for model in ("verifier", "ranker", "none-such"):
        got = await walk(reads.checkpoints, "before", model, 6)
        expected = sorted(
            (r for r in rows if r["model_name"] == model),
            key=lambda r: (r["created_at"], r["id"]),
            reverse=True,
        )
        assert [(c.version, c.framework) for c in got] == [
            (r["version"], r["framework"]) for r in expected
        ]


async def test_live_services_are_the_complement_of_stale_ones(engine: AsyncEngine) -> None:
    rng = random.Random(4)
    now = await _now(engine)
    rows = [
        {
            "service_name": service,
            "instance_id": f"i-{n:03d}",
            "status": "ok",
            "last_heartbeat": now - dt.timedelta(seconds=rng.choice((5, 50, 500, 5000))),
        }
        for service in ("verifier", "ranker", "gateway")
        for n in range(30)
    ]
    await insert_rows(engine, metadata.tables["service_health"], rows)
    reads = VerificationReads(engine)
    for within in (dt.timedelta(seconds=100), dt.timedelta(seconds=1000), dt.timedelta(0)):
        for service in (None, "ranker"):
            live = await walk(reads.live_services, "after", within, service, limit=8)
            # A row at the cutoff itself is live; the reads' now() is later than ours, so only
            # rows well inside or outside the window are compared with Python's answer.
            expected = sorted(
                (r["service_name"], r["instance_id"])
                for r in rows
                if now - r["last_heartbeat"] < within and service in (None, r["service_name"])
            )
            assert [(s.service_name, s.instance_id) for s in live] == expected
            stale = await reads.stale_services(within, service)
            both = {(s.service_name, s.instance_id) for s in [*live, *stale]}
            assert len(both) == len(live) + len(stale)
            assert len(both) == sum(service in (None, r["service_name"]) for r in rows)
    with pytest.raises(ValueError):
        await reads.live_services(dt.timedelta(seconds=-1))


async def _now(engine: AsyncEngine) -> dt.datetime:
    async with engine.connect() as conn:
        value: dt.datetime = await conn.scalar(text("SELECT now()"))
    return value


async def test_events_of_several_types_across_pages(engine: AsyncEngine) -> None:
    rng = random.Random(5)
    kinds = ("tool_call", "phase_done", "error", "note")
    rows = [
        {
            "event_id": uuid.uuid4(),
            "task_id": rng.choice(("t1", "t2")),
            "event_type": rng.choice(kinds),
            "payload": {"n": n},
            "occurred_at": _at(rng),
        }
        for n in range(400)
    ]
    await insert_rows(engine, metadata.tables["events"], rows)
    reads = TaskReads(engine)
    for types in (["tool_call", "error"], ("note",), ["error", "error", "phase_done"], "note"):
        for task_id in (None, "t1"):
            with count_statements(engine) as statements:
                got = await walk(reads.events, "after", task_id=task_id, event_type=types, limit=11)
            wanted = {types} if isinstance(types, str) else set(types)
            expected = sorted(
                (r for r in rows if r["event_type"] in wanted and task_id in (None, r["task_id"])),
                key=lambda r: (r["occurred_at"], r["event_id"]),
            )
            assert [e.event_id for e in got] == [r["event_id"] for r in expected]
            assert len(statements) == max(1, -(-len(expected) // 11))
    with pytest.raises(ValueError):
        await reads.events(event_type=[])
