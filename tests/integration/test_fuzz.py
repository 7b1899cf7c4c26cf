"""Generated payloads (wrong types, huge and SQL-looking strings, NaN and infinities, unicode,
NULs, nested junk in JSON) never crash the worker: every job is either stored verbatim or rejected
with a clear error that is recorded as a dead letter."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job, SerializationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline import JobFailed
from tests.integration.helpers import rows, seed_tree

NASTY = st.sampled_from(
    [
        "'; DROP TABLE nodes; --",
        "Robert'); DELETE FROM events; --",
        "\x00",
        "a\x00b",
        "ñ ü 漢字 🙂",
        "x" * 5000,
        "",
        " ",
        "\\u0000",
        '{"$ne": null}',
        "NaN",
        "1e309",
    ]
)
TEXT = st.text(max_size=80) | NASTY
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)
JUNK = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(TEXT, SCALARS, max_size=2)


@st.composite
def events_job(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    event = {
        "event_id": str(uuid.uuid4()) if draw(st.booleans()) else draw(JUNK),
        "event_type": draw(TEXT | JUNK),
        "payload": draw(st.dictionaries(TEXT, JSON, max_size=4) | JUNK),
        "occurred_at": "2026-05-01T10:00:00+00:00" if draw(st.booleans()) else draw(JUNK),
    }
    return "record_events", {"events": [event]}


@st.composite
def nodes_job(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    node = {
        "node_id": f"n-{uuid.uuid4().hex}" if draw(st.booleans()) else draw(TEXT | JUNK),
        "parent_id": "root",
        "label": draw(TEXT | JUNK),
        "metadata": draw(st.dictionaries(TEXT, JSON, max_size=4) | JUNK),
    }
    return "insert_nodes", {"project_id": "p", "nodes": [node]}


@st.composite
def scores_job(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    score = {"node_id": "root", "ucb_score": draw(st.floats() | JUNK), "version": draw(JUNK)}
    return "update_scores", {"project_id": "p", "scores": [score]}


@st.composite
def claims_job(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    claim = {
        "external_id": f"c-{uuid.uuid4().hex}",
        "content": draw(TEXT | JUNK),
        "metadata": draw(st.dictionaries(TEXT, JSON, max_size=3) | JUNK),
    }
    return "upsert_claims", {"claims": [claim], "actor": draw(TEXT | JUNK)}


JOBS = st.lists(events_job() | nodes_job() | scores_job() | claims_job(), min_size=5, max_size=15)


def same(a: Any, b: Any) -> bool:
    """JSON equality, with floats compared as floats (jsonb keeps numbers, not their spelling)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


async def stored(engine: AsyncEngine, function: str, payload: dict[str, Any]) -> bool:
    """Whether the job's item is in the database exactly as it was sent."""
    if function == "record_events":
        [event] = payload["events"]
        found = await rows(
            engine,
            "SELECT event_type, payload FROM events WHERE event_id = :i",
            i=event["event_id"],
        )
        return found == [(event["event_type"], found[0][1])] and same(found[0][1], event["payload"])
    if function == "insert_nodes":
        [node] = payload["nodes"]
        found = await rows(
            engine, "SELECT label, metadata FROM nodes WHERE node_id = :n", n=node["node_id"]
        )
        return (
            len(found) == 1 and found[0][0] == node["label"] and same(found[0][1], node["metadata"])
        )
    if function == "upsert_claims":
        [claim] = payload["claims"]
        found = await rows(
            engine,
            "SELECT content, metadata FROM claims WHERE external_id = :e",
            e=claim["external_id"],
        )
        return found[0][0] == claim["content"] and same(found[0][1], claim["metadata"])
    return True  # a score update has nothing verbatim to compare: its value is a number


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(jobs=JOBS)
async def test_generated_payloads_never_crash_the_worker(
    jobs: list[tuple[str, dict[str, Any]]],
    producer: ArqRedis,
    run_worker: Callable[..., Any],
    engine: AsyncEngine,
) -> None:
    if not await rows(engine, "SELECT 1 FROM nodes WHERE node_id = 'root'"):
        await seed_tree(producer, "p", [])
        await run_worker()
    enqueued: list[tuple[str, dict[str, Any], Job]] = []
    for function, payload in jobs:
        try:
            job = await producer.enqueue_job(function, **payload)
        except SerializationError:
            continue  # msgpack itself refused it (an integer over 64 bits): never reaches Redis
        assert job is not None
        enqueued.append((function, payload, job))
    worker = await run_worker()

    assert worker.jobs_complete + worker.jobs_failed == len(enqueued)
    assert worker.jobs_retried == 0
    for function, payload, job in enqueued:
        info = await job.result_info()
        assert info is not None
        if info.success:
            assert await stored(engine, function, payload), (function, payload)
        else:
            assert isinstance(info.result, JobFailed)
            assert info.result.kind in {"InvalidPayload", "DataError"}
            assert info.result.message.startswith(function)
            dead = await rows(
                engine,
                "SELECT error_class, error_message FROM dead_letters WHERE job_id = :j",
                j=job.job_id,
            )
            # PostgreSQL text cannot hold a NUL; the record writes it out
            written = info.result.message.replace("\x00", "\\x00")
            assert dead == [(info.result.kind, written)]
