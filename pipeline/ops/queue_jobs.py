"""The jobs in the queue, one by one (``pipeline jobs``), and cancelling one so that nothing
vanishes: a cancelled job becomes a dead letter (reason ``Cancelled``) before it leaves Redis.

A job's state, as arq's keys say it: *in progress* while its in-progress key exists; *retrying*
when the pipeline handed it back at least once (its retry clock, which keeps the last error);
otherwise *due* or *deferred* by its score. Tries are arq's count of started runs.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.errors import Cancelled
from pipeline.ops import dead_letters
from pipeline.serialization import UNDELIVERABLE, deserialize
from pipeline.worker.retries import CLOCK_PREFIX

State = Literal["due", "deferred", "in_progress", "retrying"]
STATES: tuple[State, ...] = ("due", "deferred", "in_progress", "retrying")
#: How long a cancel holds a job (as a worker would) while its dead letter is written; if the
#: cancel dies meanwhile, the job runs again after this, so it is never lost.
HOLD_MS = 60_000

# KEYS: queue, in-progress key, job key. ARGV: hold token, hold (ms), job id. Holds a queued job
# the way a worker claims it, so no worker starts it; returns its body, or 'gone' / 'running'.
_HOLD = """
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return 'gone'
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 'running'
end
return redis.call('GET', KEYS[3]) or false
"""
# KEYS: queue, in-progress key, job key, retry key, retry clock. ARGV: job id, hold token. Removes
# a held job; 0 if the hold was lost (it expired and a worker took the job).
_REMOVE = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return 1
"""
# KEYS: in-progress key. ARGV: hold token. Lets go of a hold (the dead letter was not written).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """One job of the queue, as ``pipeline jobs`` shows it."""

    job_id: str
    function: str
    state: State
    tries: int
    returns: int
    enqueued_at: dt.datetime | None
    due_at: dt.datetime
    age_s: float | None
    last_error: str | None
    payload: dict[str, Any] | None

    def summary(self) -> dict[str, Any]:
        """Everything but the payload, as JSON takes it."""
        return {
            "job_id": self.job_id,
            "function": self.function,
            "state": self.state,
            "tries": self.tries,
            "returns": self.returns,
            "enqueued_at": self.enqueued_at.isoformat() if self.enqueued_at else None,
            "due_at": self.due_at.isoformat(),
            "age_s": self.age_s,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What ``cancel`` did: ``dead_letter_id`` is set when the job was cancelled."""

    job_id: str
    outcome: Literal["cancelled", "gone", "running"]
    dead_letter_id: int | None = None


def _decoded(body: bytes | None) -> tuple[str, dict[str, Any] | None, int | None]:
    """Function, keyword arguments and enqueue time (ms) of a job's body, as far as it decodes."""
    if body is None:
        return "unknown", None, None
    try:
        job = deserialize(body, unicode_errors="replace")
    except Exception:  # not msgpack (pickle, garbage): still a job of the queue
        return "unknown", None, None
    if not isinstance(job, dict):
        return "unknown", None, None
    function = job.get("f") if isinstance(job.get("f"), str) else "unknown"
    kwargs = job.get("k") if isinstance(job.get("k"), dict) else None
    enqueued = job.get("et") if isinstance(job.get("et"), int) else None
    return str(function), kwargs, enqueued


def _utc(ms: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


async def _jobs(
    redis: aioredis.Redis, entries: list[tuple[bytes, float]], *, with_payload: bool
) -> list[QueuedJob]:
    """The jobs of ``entries`` (id, score), their keys read in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, _ in entries:
            key = job_id.decode()
            pipe.get(job_key_prefix + key)
            pipe.exists(in_progress_key_prefix + key)
            pipe.get(retry_key_prefix + key)
            pipe.hmget(CLOCK_PREFIX + key, ["returns", "error"])
        answers = await pipe.execute()
    now = time.time() * 1000
    found = []
    for i, (job_id, score) in enumerate(entries):
        body, running, tries, (returns, error) = answers[4 * i : 4 * i + 4]
        function, kwargs, enqueued = _decoded(body)
        handed_back = int(returns or 0)
        state: State
        if running:
            state = "in_progress"
        elif handed_back:
            state = "retrying"
        else:
            state = "due" if score <= now else "deferred"
        found.append(
            QueuedJob(
                job_id=job_id.decode(errors="replace"),
                function=function,
                state=state,
                tries=int(tries or 0),
                returns=handed_back,
                enqueued_at=_utc(enqueued) if enqueued is not None else None,
                due_at=_utc(score),
                age_s=round((now - enqueued) / 1000, 3) if enqueued is not None else None,
                last_error=error.decode(errors="replace") if error else None,
                payload=kwargs if with_payload else None,
            )
        )
    return found


async def listing(
    redis: aioredis.Redis,
    queue_name: str,
    *,
    limit: int = 50,
    state: State | None = None,
    function: str | None = None,
    scan: int = 10_000,
) -> list[QueuedJob]:
    """Up to ``limit`` jobs in the order workers take them (due first), of one state or
    function if asked; at most ``scan`` jobs of the queue are looked at."""
    entries = await redis.zrange(queue_name, 0, scan - 1, withscores=True)
    found: list[QueuedJob] = []
    for start in range(0, len(entries), 500):
        for job in await _jobs(redis, entries[start : start + 500], with_payload=False):
            if (state is None or job.state == state) and function in (None, job.function):
                found.append(job)
                if len(found) >= limit:
                    return found
    return found


async def get(redis: aioredis.Redis, queue_name: str, job_id: str) -> QueuedJob | None:
    """One job of the queue, with its payload; None if it is not in the queue."""
    score = await redis.zscore(queue_name, job_id)
    if score is None:
        return None
    [job] = await _jobs(redis, [(job_id.encode(), score)], with_payload=True)
    return job


async def cancel(
    redis: aioredis.Redis, engine: AsyncEngine, queue_name: str, job_id: str, *, reason: str
) -> Cancellation:
    """Take a queued job out of the queue, keeping it as a dead letter first.

    The job is held as a worker holds a job it runs (its in-progress key), then its dead letter
    is written, then it leaves Redis. A job in progress is not cancelled. Whatever fails or dies
    in between, the job either runs (the hold expires) or is a dead letter, never neither.
    """
    token = f"cancel:{uuid.uuid4().hex}"
    keys = (in_progress_key_prefix + job_id, job_key_prefix + job_id)
    held = await redis.register_script(_HOLD)(
        keys=[queue_name, *keys], args=[token, HOLD_MS, job_id]
    )
    if held in (b"gone", b"running"):
        return Cancellation(job_id, held.decode())
    try:
        letter = await _keep(redis, engine, job_id, held or None, reason)
    except BaseException:
        await redis.register_script(_RELEASE)(keys=[keys[0]], args=[token])
        raise
    removed = await redis.register_script(_REMOVE)(
        keys=[queue_name, *keys, retry_key_prefix + job_id, CLOCK_PREFIX + job_id],
        args=[job_id, token],
    )
    if not removed:  # the hold ran out and a worker took the job: it runs, the letter can go
        await dead_letters.discard(engine, letter)
        return Cancellation(job_id, "running")
    return Cancellation(job_id, "cancelled", letter)


async def _keep(
    redis: aioredis.Redis, engine: AsyncEngine, job_id: str, body: bytes | None, reason: str
) -> int:
    function, kwargs, _ = _decoded(body)
    tries = int(await redis.get(retry_key_prefix + job_id) or 0)
    decoded = kwargs is not None and function != "unknown"
    return await dead_letters.keep(
        engine,
        job_id=job_id,
        function=function if decoded else UNDELIVERABLE,
        payload=kwargs if decoded and kwargs is not None else {},
        error=Cancelled(reason),
        tries=tries,
        raw=None if decoded else (body or b""),
    )
