"""Pausing consumption of a queue (``pipeline pause`` / ``pipeline resume``).

A pause is one Redis key beside the queue, ``pipeline:paused:<queue>``, holding who paused it,
when and why (JSON); it has no expiry, so a pause lasts until someone resumes. Batch-claiming
workers read it inside their claim script, so no job is claimed from the first poll after the
pause; stock arq workers (``PIPELINE_BATCH_CLAIMS=false``) follow it within their status interval
(a second). Jobs already running finish; nothing is lost or moved: the queue just waits.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict

PAUSE_PREFIX = "pipeline:paused:"


class Pause(BaseModel):
    """Who paused a queue, when, and why."""

    model_config = ConfigDict(frozen=True)
    since: dt.datetime
    by: str
    reason: str = ""


def pause_key(queue_name: str) -> str:
    """The Redis key whose presence pauses ``queue_name``."""
    return f"{PAUSE_PREFIX}{queue_name}"


async def pause(redis: aioredis.Redis, queue_name: str, reason: str = "") -> Pause:
    """Pause ``queue_name`` (again: the first pause's time and author are kept)."""
    entry = Pause(
        since=dt.datetime.now(dt.UTC),
        by=f"{getpass.getuser()}@{socket.gethostname()}",
        reason=reason,
    )
    await redis.set(pause_key(queue_name), entry.model_dump_json(), nx=True)
    current = await paused(redis, queue_name)
    return current or entry


async def resume(redis: aioredis.Redis, queue_name: str) -> bool:
    """Resume ``queue_name``; whether it was paused."""
    return bool(await redis.delete(pause_key(queue_name)))


async def paused(redis: aioredis.Redis, queue_name: str) -> Pause | None:
    """The queue's pause, or None while workers consume it."""
    raw = await redis.get(pause_key(queue_name))
    if raw is None:
        return None
    try:
        return Pause.model_validate_json(raw)
    except ValueError:  # written by hand: still a pause
        return Pause(since=dt.datetime.now(dt.UTC), by="unknown", reason=_text(raw))


def _text(raw: bytes | str) -> str:
    value = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return json.dumps(value)[1:-1][:200]
