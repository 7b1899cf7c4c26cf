"""Last write wins by version, whatever the arrival order; re-running a job changes nothing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.batching import run
from tests.integration.helpers import rows, seed_tree

NODE_STATE = """
    SELECT node_id, rubric_score, rubric_score_version, ucb_score, ucb_score_version,
           status, status_version, updated_at
    FROM nodes WHERE project_id = 'p' AND node_id <> 'root' ORDER BY node_id
"""


async def test_out_of_order_and_duplicate_updates_keep_the_highest_version(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    rng = random.Random(7)
    nodes = ["a", "b", "c"]
    await seed_tree(producer, "p", nodes)
    await run_worker()
    updates = [(n, v) for n in nodes for v in range(1, 41)]
    updates += updates[:30]  # duplicates
    rng.shuffle(updates)
    # Across jobs, and several updates of one node inside one job.
    for start in range(0, len(updates), 7):
        chunk = updates[start : start + 7]
        await producer.enqueue_job(
            "update_scores",
            project_id="p",
            scores=[
                {"node_id": n, "rubric_score": v / 100, "ucb_score": v, "version": v}
                for n, v in chunk
            ],
        )
        await producer.enqueue_job(
            "update_statuses",
            project_id="p",
            statuses=[
                {"node_id": n, "status": "pruned" if v == 40 else "alive", "version": v}
                for n, v in chunk
            ],
        )
    worker = await run_worker()
    assert worker.jobs_failed == 0
    state = await rows(engine, NODE_STATE)
    assert [tuple(r[:7]) for r in state] == [(n, 0.4, 40, 40.0, 40, "pruned", 40) for n in nodes]

    # A re-delivered old job and a re-run of the newest one change nothing, not even updated_at.
    await producer.enqueue_job(
        "update_scores",
        project_id="p",
        scores=[{"node_id": "a", "rubric_score": 0.9, "version": 3}],
    )
    await producer.enqueue_job(
        "update_scores",
        project_id="p",
        scores=[{"node_id": "b", "rubric_score": 0.4, "ucb_score": 40, "version": 40}],
    )
    await run_worker()
    assert await rows(engine, NODE_STATE) == state


async def test_each_score_keeps_its_own_newest_version(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", ["a"])
    await run_worker()
    # The newer update carries only ucb; the older one only rubric: both must stand.
    await producer.enqueue_job(
        "update_scores", project_id="p", scores=[{"node_id": "a", "ucb_score": 2.0, "version": 20}]
    )
    await run_worker()
    await producer.enqueue_job(
        "update_scores",
        project_id="p",
        scores=[{"node_id": "a", "rubric_score": 0.7, "version": 10}],
    )
    await producer.enqueue_job(
        "update_scores", project_id="p", scores=[{"node_id": "a", "ucb_score": 1.0, "version": 15}]
    )
    await run_worker()
    state = await rows(engine, NODE_STATE)
    assert tuple(state[0][:5]) == ("a", 0.7, 10, 2.0, 20)


async def test_default_version_is_the_enqueue_time(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", ["a"])
    await run_worker()
    first = await producer.enqueue_job(
        "update_statuses", project_id="p", statuses=[{"node_id": "a", "status": "expanded"}]
    )
    await asyncio.sleep(0.005)  # versions default to the enqueue time, in whole milliseconds
    await producer.enqueue_job(
        "update_statuses", project_id="p", statuses=[{"node_id": "a", "status": "terminal"}]
    )
    await run_worker()
    info = await first.info()
    assert info is not None
    state = await rows(engine, NODE_STATE)
    assert state[0][5] == "terminal"
    assert state[0][6] > int(info.enqueue_time.timestamp() * 1_000_000)


AUDIT = """
    SELECT entity_id, changes->'before'->>'status', changes->'after'->>'status',
           (changes->'after'->>'status_version')::int8, actor
    FROM audit_log WHERE entity_type = 'node' AND action = 'update' ORDER BY id
"""


async def test_every_status_update_that_applies_and_nothing_else_is_audited(
    producer: ArqRedis, run_worker: Callable[..., Any], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", ["a", "b", "c"])
    await run_worker()

    async def statuses(*items: tuple[str, str, int], actor: str | None = None) -> None:
        await producer.enqueue_job(
            "update_statuses",
            project_id="p",
            actor=actor,
            statuses=[{"node_id": n, "status": s, "version": v} for n, s, v in items],
        )
        await run_worker()

    await statuses(("a", "expanded", 5), ("b", "alive", 5), ("c", "pruned", 5), actor="judge")
    # A score-only update (unless audit_score_updates), a stale or a re-run status update
    # leaves no entry; a newer version of the same status moves status_version, and is one.
    await producer.enqueue_job(
        "update_scores", project_id="p", scores=[{"node_id": "b", "ucb_score": 1.0, "version": 9}]
    )
    await statuses(("a", "terminal", 7), ("b", "alive", 6), ("c", "alive", 4))
    await statuses(("a", "terminal", 7))
    assert sorted(await rows(engine, AUDIT), key=lambda r: (r[3], r[0])) == [
        ("p/a", "alive", "expanded", 5, "judge"),
        ("p/b", None, None, 5, "judge"),
        ("p/c", "alive", "pruned", 5, "judge"),
        ("p/b", None, None, 6, None),
        ("p/a", "expanded", "terminal", 7, None),
    ]


async def test_a_null_score_clears_it_and_a_score_left_out_stays(
    producer: ArqRedis, worker_of: Callable[..., Any], engine: AsyncEngine
) -> None:
    await seed_tree(producer, "p", ["a"])
    both = {"node_id": "a", "rubric_score": 0.5, "ucb_score": 1.5, "version": 1}
    await producer.enqueue_job("update_scores", project_id="p", scores=[both])
    await run(worker_of)
    cleared = {"node_id": "a", "ucb_score": None, "version": 2}  # rubric_score not given
    job = await producer.enqueue_job("update_scores", project_id="p", scores=[cleared])
    stale = {"node_id": "a", "rubric_score": None, "version": 1}  # a clear that is too old
    await producer.enqueue_job("update_scores", project_id="p", scores=[stale])
    await run(worker_of)
    assert job is not None and (await job.result(timeout=5))["applied"] == 1
    state = "SELECT rubric_score, rubric_score_version, ucb_score, ucb_score_version FROM nodes"
    assert await rows(engine, state + " WHERE node_id = 'a'") == [(0.5, 1, None, 2)]
