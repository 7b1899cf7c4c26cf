"""The dead-letter store: jobs that can never succeed as sent, kept with their payload and error.

A dead letter holds the job's keyword arguments as JSON (``payload``), or, when they cannot be
(the job never decoded, was not an arq job, or nests too deep for JSON), its bytes (``raw``, with
``payload`` ``{}``). Only a letter without raw bytes can be replayed.

A replayed dead letter is enqueued again under the job id ``replay:<dead letter id>:<random>``:
when it succeeds its dead letter is deleted, and when it fails again the same row is refreshed
(its error, tries and last-seen time), so a dead letter is never duplicated by replaying it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import reprlib
import uuid
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.errors import TransientError, classify
from pipeline.kinds import FUNCTION_NAMES
from pipeline.nesting import JOB_MAX_DEPTH, deeper_than
from pipeline.serialization import serialize

REPLAY_PREFIX = "replay:"

_RECORD = text(
    """
    INSERT INTO dead_letters (job_id, function, payload, raw, error_class, error_message, tries)
    VALUES (:job_id, :function, CAST(:payload AS jsonb), :raw, :error_class, :error_message,
            :tries)
    ON CONFLICT (job_id) DO UPDATE
    SET error_class = EXCLUDED.error_class, error_message = EXCLUDED.error_message,
        tries = GREATEST(dead_letters.tries, EXCLUDED.tries), last_seen_at = now()
    RETURNING id
    """
)
_REFRESH = text(
    """
    UPDATE dead_letters
    SET error_class = :error_class, error_message = :error_message,
        tries = tries + :tries, last_seen_at = now()
    WHERE id = :id
    RETURNING id
    """
)
_COLUMNS = (
    "id, job_id, function, payload, raw, error_class, error_message, tries, first_seen_at, "
    "last_seen_at"
)


def _bounded_repr() -> reprlib.Repr:
    """A ``repr`` of bounded depth and size, for a payload nothing else can store."""
    bounded = reprlib.Repr()
    bounded.maxlevel, bounded.maxstring, bounded.maxother = 20, 10_000, 1000
    bounded.maxdict = bounded.maxlist = bounded.maxtuple = 1000
    return bounded


_REPR = _bounded_repr()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A row of the dead-letter store."""

    id: int
    job_id: str
    function: str
    payload: dict[str, Any]
    raw: bytes | None
    error_class: str
    error_message: str
    tries: int
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime

    @property
    def replayable(self) -> bool:
        """Whether the letter holds the job's arguments (a letter of raw bytes does not)."""
        return self.raw is None


class NotReplayable(ValueError):
    """A dead letter holds only the raw bytes of a job that never decoded: nothing to replay."""


def _scalar(value: Any) -> Any:
    """A value JSON carries as it is, or its ``repr``: non-finite floats, bytes, any object."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot carry spelled as text (see :func:`_scalar`, and keys
    that are not strings), built by a loop: input may nest as deep as msgpack decodes."""
    root: list[Any] = [None]
    pending: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while pending:
        source, target, slot = pending.pop()
        if isinstance(source, dict):
            copy: dict[str, Any] = {}
            target[slot] = copy
            for key, item in source.items():
                name = key if isinstance(key, str) else repr(key)
                copy[name] = None  # the slot keeps the key's order
                pending.append((item, copy, name))
        elif isinstance(source, list | tuple):
            target[slot] = items = [None] * len(source)
            pending.extend((item, items, i) for i, item in enumerate(source))
        else:
            target[slot] = _scalar(source)
    return root[0]


def payload_json(payload: dict[str, Any]) -> str:
    """The payload as JSON that ``jsonb`` accepts, whatever it holds (NULs are replaced).

    Raises :class:`ValueError` for a payload nested deeper than ``JOB_MAX_DEPTH`` levels, which
    the encoder (and a reader's decoder) could not take without running out of stack.
    """
    if deeper_than(payload, JOB_MAX_DEPTH):
        raise ValueError(f"the payload is nested deeper than {JOB_MAX_DEPTH} levels")
    encoded = json.dumps(_jsonable(payload), ensure_ascii=False, allow_nan=False)
    return encoded.replace("\\u0000", "\\ufffd")


def _packed(payload: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """The columns of a payload JSON cannot store: its msgpack bytes, or its text."""
    try:
        return {}, serialize(payload)
    except (TypeError, ValueError):
        return {"unstorable_payload": _REPR.repr(payload)}, None


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
    raw: bytes | None = None,
) -> int:
    """Store (or refresh) the dead letter of a job, and return its id; recording the same job
    twice keeps one row.

    ``raw`` is the job's bytes when its arguments did not decode (``payload`` is then ``{}``); a
    payload nested too deep for JSON is stored as its msgpack bytes instead.
    """
    if deeper_than(payload, JOB_MAX_DEPTH):
        payload, packed = _packed(payload)
        raw = packed if raw is None else raw
    params = {
        "error_class": type(error).__name__,
        "error_message": _text(str(error)[:4000]),
        "tries": tries,
    }
    original = replayed_from(job_id)
    async with engine.begin() as conn:
        if original is not None:
            refreshed = (await conn.execute(_REFRESH, {**params, "id": original})).scalar()
            if refreshed is not None:
                return int(refreshed)
        result = await conn.execute(
            _RECORD,
            {
                **params,
                "job_id": _text(job_id),
                "function": _text(function),
                "payload": payload_json(payload),
                "raw": raw,
            },
        )
        return int(result.scalar_one())


async def keep(
    engine: AsyncEngine,
    *,
    job_id: str,
    function: str,
    payload: dict[str, Any],
    error: BaseException,
    tries: int,
    raw: bytes | None = None,
) -> int:
    """:func:`record`, made to succeed whatever the job carried: when PostgreSQL refuses the
    payload itself, the letter is recorded with the payload's msgpack bytes (or its text).

    Raises only when the database cannot be written; the caller then hands the job back to arq
    (a dead letter must not be lost).
    """
    try:
        return await record(
            engine,
            job_id=job_id,
            function=function,
            payload=payload,
            error=error,
            tries=tries,
            raw=raw,
        )
    except Exception as exc:
        if isinstance(classify(exc), TransientError):
            raise
        unstorable, packed = _packed(payload)
        return await record(
            engine,
            job_id=job_id,
            function=function,
            payload=unstorable,
            error=error,
            tries=tries,
            raw=packed if raw is None else raw,
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


async def discard(engine: AsyncEngine, dead_letter_id: int) -> None:
    """Delete a cancelled job's dead letter again: the job was not cancelled after all."""
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM dead_letters WHERE id = :id AND error_class = 'Cancelled'"),
            {"id": dead_letter_id},
        )


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
    """Enqueue each dead letter's original payload again; the new job ids.

    Raises :class:`NotReplayable`, before enqueueing any, if a letter holds only raw bytes or
    names a function the pipeline does not have.
    """
    raw = [letter.id for letter in letters if not letter.replayable]
    if raw:
        raise NotReplayable(
            f"dead letter {', '.join(map(str, raw))} holds only the raw bytes of a job that "
            "never decoded: nothing to replay"
        )
    unknown = [letter.id for letter in letters if letter.function not in FUNCTION_NAMES]
    if unknown:
        raise NotReplayable(
            f"dead letter {', '.join(map(str, unknown))} names a function this version of the "
            "pipeline does not have: nothing was replayed"
        )
    job_ids = []
    for letter in letters:
        job_id = f"{REPLAY_PREFIX}{letter.id}:{uuid.uuid4().hex}"
        await redis.enqueue_job(letter.function, _job_id=job_id, **letter.payload)
        job_ids.append(job_id)
    return job_ids


_OLDER = (
    "FROM dead_letters WHERE last_seen_at < now() - CAST(:age AS interval) "
    "AND (CAST(:function AS text) IS NULL OR function = :function)"
)


async def count_older(
    engine: AsyncEngine, older_than: dt.timedelta, *, function: str | None = None
) -> int:
    """How many dead letters :func:`purge` would delete now."""
    async with engine.connect() as conn:
        query = text(f"SELECT count(*) {_OLDER}")
        result = await conn.execute(query, {"age": older_than, "function": function})
        return int(result.scalar_one())


async def purge(
    engine: AsyncEngine, older_than: dt.timedelta, *, function: str | None = None
) -> int:
    """Delete dead letters last seen longer ago than ``older_than``; how many were deleted."""
    async with engine.begin() as conn:
        query = text(f"DELETE {_OLDER}")
        result = await conn.execute(query, {"age": older_than, "function": function})
        return int(result.rowcount)
