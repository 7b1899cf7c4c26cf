"""The dead-letter store: jobs that can never succeed as sent, kept with their payload and error.

A replayed dead letter is enqueued again under the job id ``replay:<dead letter id>:<random>``:
when it succeeds its dead letter is deleted, and when it fails again the same row is refreshed
(its error, tries and last-seen time), so a dead letter is never duplicated by replaying it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

REPLAY_PREFIX = "replay:"

_RECORD = text(
    """
    INSERT INTO dead_letters (job_id, function, payload, error_class, error_message, tries)
    VALUES (:job_id, :function, CAST(:payload AS jsonb), :error_class, :error_message, :tries)
    ON CONFLICT (job_id) DO UPDATE
    SET error_class = EXCLUDED.error_class, error_message = EXCLUDED.error_message,
        tries = GREATEST(dead_letters.tries, EXCLUDED.tries), last_seen_at = now()
    """
)
_REFRESH = text(
    """
    UPDATE dead_letters
    SET error_class = :error_class, error_message = :error_message,
        tries = tries + :tries, last_seen_at = now()
    WHERE id = :id
    """
)
_COLUMNS = (
    "id, job_id, function, payload, error_class, error_message, tries, first_seen_at, last_seen_at"
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A row of the dead-letter store."""

    id: int
    job_id: str
    function: str
    payload: dict[str, Any]
    error_class: str
    error_message: str
    tries: int
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime


def _jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot carry spelled as text: non-finite floats, bytes,
    keys that are not strings, and any other object (by its ``repr``)."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else repr(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def payload_json(payload: dict[str, Any]) -> str:
    """The payload as JSON that ``jsonb`` accepts, whatever it holds (NULs are replaced)."""
    encoded = json.dumps(_jsonable(payload), ensure_ascii=False, allow_nan=False)
    return encoded.replace("\\u0000", "\\ufffd")


def replayed_from(job_id: str) -> int | None:
    """The dead letter a replayed job came from, if it is one."""
    match = re.fullmatch(rf"{REPLAY_PREFIX}(\d+):\w+", job_id)
    return int(match.group(1)) if match else None


async def record(
    engine: AsyncEngine,
    *,
    job_id: str,
    function: str,
    payload: dict[str, Any],
    error: BaseException,
    tries: int,
) -> None:
    """Store (or refresh) the dead letter of a job; recording the same job twice keeps one row."""
    params = {
        "error_class": type(error).__name__,
        "error_message": _text(str(error)[:4000]),
        "tries": tries,
    }
    original = replayed_from(job_id)
    async with engine.begin() as conn:
        if original is not None:
            refreshed = await conn.execute(_REFRESH, {**params, "id": original})
            if refreshed.rowcount:
                return
        await conn.execute(
            _RECORD,
            {
                **params,
                "job_id": _text(job_id),
                "function": _text(function),
                "payload": payload_json(payload),
            },
        )


def _text(value: str) -> str:
    """``value`` as PostgreSQL text can hold it: a NUL (which a validation message may quote
    from the payload) is written out."""
    return value.replace("\x00", "\\x00")


async def resolve(engine: AsyncEngine, job_id: str) -> None:
    """A job succeeded: if it was a replay, its dead letter is done with."""
    original = replayed_from(job_id)
    if original is not None:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM dead_letters WHERE id = :id"), {"id": original})


async def listing(
    engine: AsyncEngine, *, function: str | None = None, limit: int = 50
) -> list[DeadLetter]:
    """The newest dead letters first, optionally of one function."""
    query = text(
        f"SELECT {_COLUMNS} FROM dead_letters "  # noqa: S608 - a constant column list
        "WHERE CAST(:function AS text) IS NULL OR function = :function "
        "ORDER BY last_seen_at DESC, id DESC LIMIT :limit"
    )
    async with engine.connect() as conn:
        result = await conn.execute(query, {"function": function, "limit": limit})
        return [DeadLetter(**row) for row in result.mappings()]


async def get(engine: AsyncEngine, dead_letter_id: int) -> DeadLetter | None:
    """One dead letter."""
    query = text(f"SELECT {_COLUMNS} FROM dead_letters WHERE id = :id")  # noqa: S608
    async with engine.connect() as conn:
        row = (await conn.execute(query, {"id": dead_letter_id})).mappings().first()
        return DeadLetter(**row) if row else None


async def replay(redis: ArqRedis, letters: list[DeadLetter]) -> list[str]:
    """Enqueue each dead letter's original payload again; the new job ids."""
    job_ids = []
    for letter in letters:
        job_id = f"{REPLAY_PREFIX}{letter.id}:{uuid.uuid4().hex}"
        await redis.enqueue_job(letter.function, _job_id=job_id, **letter.payload)
        job_ids.append(job_id)
    return job_ids


async def purge(
    engine: AsyncEngine, older_than: dt.timedelta, *, function: str | None = None
) -> int:
    """Delete dead letters last seen longer ago than ``older_than``; how many were deleted."""
    query = text(
        "DELETE FROM dead_letters WHERE last_seen_at < now() - CAST(:age AS interval) "
        "AND (CAST(:function AS text) IS NULL OR function = :function)"
    )
    async with engine.begin() as conn:
        result = await conn.execute(query, {"age": older_than, "function": function})
        return int(result.rowcount)
