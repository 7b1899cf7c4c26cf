"""When a job whose writes did not commit runs again, and when it is given up.

arq counts a try each time a job starts and fails the job once its tries pass ``max_tries``. The
pipeline hands a job back with ``Retry`` for reasons that are no fault of the job (PostgreSQL down,
a parent row not written yet), so such a run gives its try back: ``max_tries`` then counts only
runs that ended without any outcome (a worker killed, a timeout), which is what it guards against.

What bounds a job that keeps failing is time, measured on the job's retry clock in Redis: the
time between consecutive failures that PostgreSQL was reachable for (a missing reference, a
recurring serialization failure). A gap that ends in an outage does not count, so a parent held
back by an outage still lands before its child runs out of time. Once the clock passes
``retry_wait_s`` the job is dead-lettered.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.constants import retry_key_prefix
from arq.utils import timestamp_ms

from pipeline.errors import MissingReference, PipelineError, TransientError
from pipeline.settings import Settings

CLOCK_PREFIX = "pipeline:retry-clock:"

# KEYS: arq's try counter of the job, the job's retry clock. ARGV: now (ms), the clock's expiry
# (s), '1' if this failure counts (PostgreSQL was reachable) else '0', rows the run applied, the
# failure in words (for ``pipeline jobs``). Gives
# the run's try back, then returns the clock's counted milliseconds and how many times the job
# was handed back.
_HAND_BACK = """
local tries = tonumber(redis.call('GET', KEYS[1]) or '0')
if tries > 0 then
  redis.call('DECR', KEYS[1])
end
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
local waited = tonumber(redis.call('HGET', KEYS[2], 'waited') or '0')
local returns = tonumber(redis.call('HGET', KEYS[2], 'returns') or '0') + 1
if ARGV[3] == '1' then
  if last > 0 then
    waited = waited + math.max(now - last, 0)
  end
  last = now
else
  last = 0
end
redis.call('HSET', KEYS[2], 'last', last, 'waited', waited, 'returns', returns,
           'error', ARGV[5], 'failed_at', now)
redis.call('HINCRBY', KEYS[2], 'applied', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {waited, returns}
"""

# KEYS: arq's try counter of the job. Gives the run's try back (a cancelled run: shutdown).
_GIVE_BACK = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  redis.call('DECR', KEYS[1])
end
return 0
"""

# KEYS: retry clocks. Rows their earlier runs applied, in order ('0' for a job without a clock).
_APPLIED = """
local applied = {}
for i, key in ipairs(KEYS) do
  applied[i] = redis.call('HGET', key, 'applied') or '0'
end
return applied
"""


def counts(error: PipelineError) -> bool:
    """Whether a failure counts on the retry clock: PostgreSQL answered, and still failed it."""
    if isinstance(error, MissingReference):
        return True
    return isinstance(error, TransientError) and error.reachable


@dataclass(frozen=True, slots=True)
class HandBack:
    """What the retry clock says after a failed run."""

    waited_s: float
    returns: int
    give_up: bool
    defer_s: float


class RetryClock:
    """The retry clocks of the jobs of one worker (scripts registered on its Redis pool)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._scripts: dict[int, tuple[Any, Any, Any]] = {}
        self._asked: dict[int, dict[str, asyncio.Future[int]]] = {}  # by pool, this turn
        self._reads: set[asyncio.Task[None]] = set()

    def _registered(self, redis: ArqRedis) -> tuple[Any, Any, Any]:
        scripts = self._scripts.get(id(redis))
        if scripts is None:
            register = redis.register_script
            scripts = (register(_HAND_BACK), register(_GIVE_BACK), register(_APPLIED))
            self._scripts[id(redis)] = scripts
        return scripts

    async def hand_back(self, redis: ArqRedis, job_id: str, error: PipelineError) -> HandBack:
        """Record a failed run of ``job_id`` (its try given back); when to run it again, or
        whether to give it up."""
        hand_back, _, _ = self._registered(redis)
        counted = counts(error)
        waited_ms, returns = await hand_back(
            keys=[retry_key_prefix + job_id, CLOCK_PREFIX + job_id],
            args=[
                timestamp_ms(),
                self.settings.job_expiry_s,
                "1" if counted else "0",
                error.applied if isinstance(error, MissingReference) else 0,
                f"{type(error).__name__}: {error}"[:500],
            ],
        )
        waited_s = int(waited_ms) / 1000
        return HandBack(
            waited_s=waited_s,
            returns=int(returns),
            give_up=counted and waited_s >= self.settings.retry_wait_s,
            defer_s=self.delay(error, int(returns)),
        )

    async def applied(self, redis: ArqRedis, job_id: str, timeout_s: float) -> int:
        """Rows that earlier runs of ``job_id`` applied before handing it back.

        The jobs that ask in one turn of the event loop (those one commit ended) are read in one
        command, within ``timeout_s`` of the first ask; a read that fails raises for each."""
        pending = self._asked.get(id(redis))
        if pending is None:
            pending = self._asked[id(redis)] = {}
            loop = asyncio.get_running_loop()
            loop.call_soon(self._read_applied, redis, pending, loop.time() + timeout_s)
        future = pending.get(job_id)
        if future is None:
            future = pending[job_id] = asyncio.get_running_loop().create_future()
        return await future

    def _read_applied(
        self, redis: ArqRedis, pending: dict[str, asyncio.Future[int]], deadline: float
    ) -> None:
        del self._asked[id(redis)]
        task = asyncio.create_task(self._applied_of(redis, pending, deadline))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _applied_of(
        self, redis: ArqRedis, pending: dict[str, asyncio.Future[int]], deadline: float
    ) -> None:
        _, _, script = self._registered(redis)
        try:
            async with asyncio.timeout_at(deadline):
                values = await script(keys=[CLOCK_PREFIX + job_id for job_id in pending], args=[])
        except Exception as exc:  # each job then counts its own run only
            for future in pending.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for future, value in zip(pending.values(), values, strict=True):
            if not future.done():
                future.set_result(int(value or 0))

    async def give_back(self, redis: ArqRedis, job_id: str) -> None:
        """Give back the try of a run that was cancelled (the worker is stopping)."""
        _, give_back, _ = self._registered(redis)
        await give_back(keys=[retry_key_prefix + job_id], args=[])

    def delay(self, error: PipelineError, returns: int) -> float:
        """Seconds before the ``returns``-th rerun: doubling from the failure's first delay, up
        to ``retry_max_delay_s``."""
        first = (
            self.settings.reference_retry_delay_s
            if isinstance(error, MissingReference)
            else self.settings.transient_retry_delay_s
        )
        return float(min(first * 2.0 ** max(returns - 1, 0), self.settings.retry_max_delay_s))
