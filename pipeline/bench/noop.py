"""arq's own cost: the pipeline's job names and serializer, functions that do nothing.
Run with ``arq pipeline.bench.noop.NoopWorkerSettings``; ``pipeline bench`` uses it as the floor."""

from __future__ import annotations

from typing import Any

from arq import func

from pipeline.kinds import KINDS
from pipeline.redis_queue import redis_settings
from pipeline.serialization import deserialize, serialize
from pipeline.settings import get_settings


async def noop(ctx: dict[str, Any], **kwargs: Any) -> None:
    """Accept any write and do nothing with it."""


_settings = get_settings()


class NoopWorkerSettings:
    """arq settings of the no-op worker, on the pipeline's queue, serializer and max_jobs."""

    functions = [func(noop, name=kind.name) for kind in KINDS]
    redis_settings = redis_settings(str(_settings.redis_url))
    queue_name = _settings.queue_name
    max_jobs = _settings.max_jobs
    poll_delay = _settings.poll_delay_s
    job_serializer = serialize
    job_deserializer = deserialize
    log_results = False
