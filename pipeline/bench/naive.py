"""The obvious worker the pipeline replaces: each job opens a session and writes its rows in a
transaction of its own. Run it with ``arq pipeline.bench.naive.NaiveWorkerSettings``; it serves
``update_scores`` with the same payload as the pipeline, so one workload can drive both.
"""

from __future__ import annotations

from typing import Any

from arq import func
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker

from pipeline.postgres import create_engine
from pipeline.redis_queue import redis_settings
from pipeline.schema import Node
from pipeline.schema.audit import SCORE_COLUMNS
from pipeline.serialization import deserialize, serialize
from pipeline.settings import get_settings


async def startup(ctx: dict[str, Any]) -> None:
    """Engine and session factory, kept in ``ctx``."""
    # It updates scores only, and says so to the audit trigger, as the pipeline's score batches do.
    ctx["engine"] = create_engine(get_settings(), changes=SCORE_COLUMNS)
    ctx["sessions"] = async_sessionmaker(ctx["engine"], expire_on_commit=False)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close the engine."""
    await ctx["engine"].dispose()


async def update_scores(
    ctx: dict[str, Any], *, project_id: str, scores: list[dict[str, Any]]
) -> int:
    """Write each score with its own UPDATE, the whole job in one transaction (what most teams
    write first: the ORM's statement built per row, one transaction per job)."""
    async with ctx["sessions"].begin() as session:
        for item in scores:
            await session.execute(
                update(Node)
                .where(Node.project_id == project_id, Node.node_id == item["node_id"])
                .values(rubric_score=item.get("rubric_score"), ucb_score=item.get("ucb_score"))
            )
    return len(scores)


_settings = get_settings()


class NaiveWorkerSettings:
    """arq settings of the naive worker, on the pipeline's queue and serializer."""

    functions = [func(update_scores, name="update_scores")]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = redis_settings(str(_settings.redis_url))
    queue_name = _settings.queue_name
    max_jobs = _settings.db_pool_size + _settings.db_max_overflow  # one connection per job
    poll_delay = _settings.poll_delay_s
    job_serializer = serialize
    job_deserializer = deserialize
