"""A worker that claims and finishes arq jobs in batches: what both worker commands run.

Stock arq claims one job at a time: a WATCH/MULTI round trip to claim it, another to read it and
count the try, a third to finish it, each a few Redis commands that redis-py packs and parses in
Python. At thousands of small jobs a second that is the worker's whole CPU. This worker keeps
arq's key layout and every rule of its job life cycle (tries, ``max_tries``, ``retry_jobs``,
``Retry(defer=…)``, timeouts, aborts, cron jobs, results, the hooks, the per-job log lines, the
in-progress key that makes a killed worker's jobs run again, the health check), but it

- claims up to ``max_jobs`` due jobs (at most ``queue_read_limit`` looked at) in **one** Lua
  script per poll: for each job it sets the in-progress key only if no one holds it, reads the
  job, counts the try and takes an abort asked for before it started, all atomically, so stock
  arq workers and this one can share a queue;
- finishes jobs as a group (:mod:`pipeline.worker.batch.runs`): jobs that end while a finish
  round trip is running share the next one, exactly like the coalescer's group commit.

arq's own test suite runs against it (``tests/arq_suite``). One deviation is deliberate: a lost
connection never ends the process; the poll waits and tries again, and a finish is retried until
Redis takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import structlog
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import RedisError

from pipeline.ops.pause import pause_key
from pipeline.redis_queue import close_sentinels
from pipeline.worker.batch.runs import Finisher, JobRun
from pipeline.worker.batch.scripts import CLAIM

log = structlog.get_logger("pipeline.worker")


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this worker holds: arq's in-progress key is set and its try counted."""

    job_id: str
    score: int
    data: bytes | None
    job_try: int
    #: An abort was asked for before the job started (only when aborts are allowed).
    aborted: bool = False


class BatchWorker(Worker):
    """arq's ``Worker`` with batched claiming and finishing (see the module docstring).

    Everything else is arq's own: start-up and shutdown hooks, signal handling, burst mode,
    ``job_completion_wait``, the health-check key, cron scheduling, reading the abort set.
    """

    reconnect_delay_s = 0.5
    #: Jobs claimed per poll at most. Smaller than ``max_jobs`` so that work streams: jobs
    #: claimed now are validated while the previous ones' batch commits.
    claim_batch = 250
    #: How often job timeouts are checked at least (also at the earliest deadline).
    watchdog_interval_s = 0.2
    #: Whether arq's per-job INFO lines (start, success, retry, abort) are written.
    log_jobs = True

    #: arq reads its settings classes by ``Worker``'s signature: this class shows arq's own.
    __signature__ = inspect.signature(Worker)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batching()

    @classmethod
    def adopt(cls, worker: Worker) -> None:
        """Make a stock arq ``worker`` (one ``arq``'s command built) this class, from its next
        poll on: its settings, pool, context and counters stay; only the claiming changes."""
        if type(worker) is not Worker:
            raise TypeError(f"only a stock arq Worker can be adopted, not {type(worker)!r}")
        worker.__class__ = cls
        cast(BatchWorker, worker)._batching()

    def _batching(self) -> None:
        """The state this class adds to arq's worker."""
        self._finisher: Finisher | None = None
        self._claim_script: Any = None
        # Job timeouts: one watchdog for all jobs instead of a timer per job.
        self._deadlines: dict[str, float] = {}
        self._timed_out: set[str] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._watch_wake = math.inf
        self._watch_early = asyncio.Event()

    async def _poll_iteration(self) -> None:
        try:
            await self._claim_and_start()
            if self.allow_abort_jobs:
                await self._cancel_aborted_jobs()  # arq's own: one round trip a poll
            await self.heart_beat()
        except (RedisError, OSError) as exc:
            log.warning("polling Redis failed; retrying", error=repr(exc))
            await asyncio.sleep(self.reconnect_delay_s)

    async def _claim_and_start(self) -> None:
        want = min(self.max_jobs - self.job_counter, self.claim_batch, self.queue_read_limit)
        if self.burst and self.max_burst_jobs >= 0:
            want = min(want, self.max_burst_jobs - self._jobs_started())
        if not self.allow_pick_jobs or want < 1 or self.saturated():
            return
        if self._watchdog is None:
            self._watchdog = self.loop.create_task(self._watch(), name="pipeline-job-timeouts")
        for claim in await self.claim(want):
            # job_counter alone bounds the jobs (arq's semaphore is left alone: it is not used)
            self.job_counter += 1
            task = self.loop.create_task(self.run_claimed(claim), name=claim.job_id)
            task.add_done_callback(self._job_done)
            self.tasks[claim.job_id] = task

    def saturated(self) -> bool:
        """Whether the jobs in hand are work enough for now: no claim while this holds.

        The default claims up to ``max_jobs``; a subclass may stop sooner, so that jobs wait in
        Redis (where no timeout runs) rather than in the worker.
        """
        return False

    def _job_done(self, task: asyncio.Task[None]) -> None:
        """A job's task ended: free its slot (arq scans every task on every poll instead)."""
        self.job_counter -= 1
        self.tasks.pop(task.get_name(), None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job task crashed", job_id=task.get_name(), error=repr(task.exception()))

    async def _watch(self) -> None:
        """Cancel the jobs that ran past their timeout; their runs record a timeout failure.

        It wakes at the earliest deadline (at least every ``watchdog_interval_s``), and early
        when a job starts whose deadline comes sooner (:meth:`running`)."""
        while True:
            now = self.loop.time()
            wake = now + self.watchdog_interval_s
            for job_id, deadline in list(self._deadlines.items()):
                if deadline > now:
                    wake = min(wake, deadline)
                    continue
                task = self.job_tasks.get(job_id)
                if task is not None and job_id not in self._timed_out:
                    self._timed_out.add(job_id)
                    task.cancel()
            self._watch_wake = wake
            self._watch_early.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_early.wait(), wake - now)

    @contextlib.contextmanager
    def running(self, job_id: str, timeout_s: float) -> Iterator[None]:
        """While a job is inside its function: its task (the job runs in its run's task, not one
        of its own as in arq) can be aborted, and the watchdog times it out ``timeout_s`` on."""
        deadline = self.loop.time() + timeout_s
        self._deadlines[job_id] = deadline
        if deadline < self._watch_wake:
            self._watch_early.set()
        self.job_tasks[job_id] = asyncio.current_task()  # type: ignore[assignment]
        try:
            yield
        finally:
            del self.job_tasks[job_id]
            self._deadlines.pop(job_id, None)

    def timed_out(self, job_id: str) -> bool:
        """Whether the watchdog cancelled ``job_id`` (the answer is taken: asked once a run)."""
        if job_id not in self._timed_out:
            return False
        self._timed_out.discard(job_id)
        return True

    async def claim(self, want: int) -> list[ClaimedJob]:
        """Claim up to ``want`` due jobs in one round trip, as arq reads them: due first, at
        most ``queue_read_limit`` of the queue looked at."""
        if self._claim_script is None:
            self._claim_script = self.pool.register_script(CLAIM)
        flat: Sequence[Any] = await self._claim_script(
            keys=[self.queue_name, pause_key(self.queue_name)],
            args=[
                timestamp_ms(),
                want,
                self.queue_read_limit,
                int(self.in_progress_timeout_s * 1000),
                1 if self.allow_abort_jobs else 0,
            ],
        )
        return [
            ClaimedJob(
                flat[i].decode(),
                int(float(flat[i + 1])),
                flat[i + 2],
                int(flat[i + 3]),
                flat[i + 4] == 1,
            )
            for i in range(0, len(flat), 5)
        ]

    @property
    def finisher(self) -> Finisher:
        """The group finisher (created on first use, on the worker's Redis pool)."""
        if self._finisher is None:
            self._finisher = Finisher(self)
        return self._finisher

    async def run_claimed(self, claim: ClaimedJob) -> None:
        """Run one claimed job the way arq's ``run_job`` does, hand its ending over and, once
        it is in Redis, call ``after_job_end`` (for jobs whose function ran, as arq does)."""
        run = JobRun(self, claim)
        ending = await run.run()
        await self.finisher.end(ending)
        if run.ctx is not None and self.after_job_end:
            await self.after_job_end(run.ctx)

    async def close(self) -> None:
        """Get every job ending into Redis before arq closes the pool."""
        if self._finisher is not None and self._pool is not None:
            await self._finisher.drain()
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        pool = self._pool
        await super().close()
        if pool is not None:
            await close_sentinels(pool)
