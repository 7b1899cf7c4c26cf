"""A worker that claims and finishes arq jobs in batches: what ``pipeline worker`` runs.

Stock arq claims one job at a time: a WATCH/MULTI round trip to claim it, another to read it and
count the try, a third to finish it, each a few Redis commands that redis-py packs and parses in
Python. At thousands of small jobs a second that is the worker's whole CPU. This worker keeps
arq's key layout and every rule of its job life cycle (tries, ``max_tries``, ``Retry(defer=…)``,
timeouts, results, the in-progress key that makes a killed worker's jobs run again, the health
check), but it

- claims up to ``max_jobs`` due jobs in **one** Lua script per poll: for each job it sets the
  in-progress key only if no one holds it, reads the job and counts the try, all atomically, so
  stock arq workers and this one can share a queue;
- finishes jobs as a group: jobs that end while a finish round trip is running share the next
  one (one Lua script for all of them), exactly like the coalescer's group commit.

Producers keep calling plain ``enqueue_job``; ``arq pipeline.WorkerSettings`` runs the same
functions under stock arq (the compatible mode). A lost connection never ends the process: the
poll waits and tries again, and a finish is retried until Redis takes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import structlog
from arq.constants import retry_key_prefix
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Function, JobExecutionFailed, Retry, RetryJob, Worker
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from pipeline.claim_scripts import CLAIM, FINISH
from pipeline.db import close_sentinels

log = structlog.get_logger("pipeline.worker")


@dataclass(frozen=True, slots=True)
class Claim:
    """A job this worker holds: arq's in-progress key is set and its try counted."""

    job_id: str
    score: int
    data: bytes | None
    job_try: int


@dataclass(frozen=True, slots=True)
class Ending:
    """How a job leaves the worker: finished (with a result to keep), or queued to run again."""

    job_id: str
    finished: bool
    result: bytes | None = None
    result_ms: int = 0
    defer_ms: int = 0

    def args(self) -> tuple[str | bytes | int, ...]:
        """This ending's five values of the FINISH script."""
        if self.finished:
            return (self.job_id, "f", 0, self.result_ms, self.result or b"")
        return (self.job_id, "r", self.defer_ms, 0, b"")


class Finisher:
    """Group-commits job endings to Redis: one script per round trip, however many jobs end."""

    def __init__(self, worker: BatchWorker) -> None:
        self._worker = worker
        self._pending: list[tuple[Ending, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing = False
        self._script = worker.pool.register_script(FINISH)

    def end(self, ending: Ending) -> asyncio.Future[None]:
        """Hand ``ending`` over; the future is done once it is in Redis, together with the
        others ending now. Cancelling the wait does not take the ending back."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pipeline-finisher")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((ending, future))
        self._wakeup.set()
        return future

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until every ending handed in so far is in Redis (at most ``timeout_s``: with Redis
        gone, the jobs' in-progress keys expire and they run again), then stop."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._pending or self._writing:
            if asyncio.get_running_loop().time() > deadline:
                log.warning(
                    "jobs not marked finished in Redis; they will run again",
                    jobs=len(self._pending),
                )
                break
            self._wakeup.set()
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch, self._pending = self._pending, []
            self._writing = True
            try:
                await self._write([value for ending, _ in batch for value in ending.args()])
            except Exception as exc:  # never let the finisher die; the jobs will run again
                log.exception("finishing jobs failed", jobs=len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                self._writing = False
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def _write(self, args: list[str | bytes | int]) -> None:
        """Run the script until Redis takes it: every command in it may be applied twice."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((RedisError, OSError)),
            wait=wait_exponential(multiplier=0.05, max=2.0),
            before_sleep=_log_finish_retry,
        ):
            with attempt:
                await self._script(keys=[self._worker.queue_name], args=args)


def _log_finish_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("finishing jobs failed; Redis will be retried", error=repr(error))


class BatchWorker(Worker):
    """arq's ``Worker`` with batched claiming and finishing (see the module docstring).

    Everything else is arq's own: start-up and shutdown hooks, signal handling, burst mode,
    ``job_completion_wait``, the health-check key. Cron jobs and job aborts are not used by the
    pipeline and are not supported here.
    """

    reconnect_delay_s = 0.5
    #: Jobs claimed per poll at most. Smaller than ``max_jobs`` so that work streams: jobs
    #: claimed now are validated while the previous ones' batch commits.
    claim_batch = 250
    #: How often job timeouts are checked: a job runs at most this much past its timeout.
    watchdog_interval_s = 0.2

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
        if self.allow_abort_jobs or self.cron_jobs:
            raise ValueError("BatchWorker supports neither job aborts nor cron jobs")
        self._finisher: Finisher | None = None
        self._claim_script: Any = None
        # Job timeouts: one watchdog for all jobs instead of a timer per job.
        self._deadlines: dict[str, float] = {}
        self._timed_out: set[str] = set()
        self._watchdog: asyncio.Task[None] | None = None

    async def _poll_iteration(self) -> None:
        try:
            await self._claim_and_start()
            await self.heart_beat()
        except (RedisError, OSError) as exc:
            log.warning("polling Redis failed; retrying", error=repr(exc))
            await asyncio.sleep(self.reconnect_delay_s)

    async def _claim_and_start(self) -> None:
        want = min(self.max_jobs - self.job_counter, self.claim_batch)
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
        """Cancel the jobs that ran past their timeout; their runs record a timeout failure."""
        while True:
            await asyncio.sleep(self.watchdog_interval_s)
            now = self.loop.time()
            for job_id, deadline in list(self._deadlines.items()):
                task = self.tasks.get(job_id)
                if deadline <= now and task is not None and job_id not in self._timed_out:
                    self._timed_out.add(job_id)
                    task.cancel()

    async def claim(self, want: int) -> list[Claim]:
        """Claim up to ``want`` due jobs in one round trip."""
        if self._claim_script is None:
            self._claim_script = self.pool.register_script(CLAIM)
        flat: Sequence[Any] = await self._claim_script(
            keys=[self.queue_name],
            args=[
                timestamp_ms(),
                want,
                max(self.queue_read_limit, want),
                int(self.in_progress_timeout_s * 1000),
            ],
        )
        return [
            Claim(flat[i].decode(), int(float(flat[i + 1])), flat[i + 2], int(flat[i + 3]))
            for i in range(0, len(flat), 4)
        ]

    @property
    def finisher(self) -> Finisher:
        """The group finisher (created on first use, on the worker's Redis pool)."""
        if self._finisher is None:
            self._finisher = Finisher(self)
        return self._finisher

    async def run_claimed(self, claim: Claim) -> None:
        """Run one claimed job the way arq's ``run_job`` does, then hand its ending over."""
        ending = await _Run(self, claim).run()
        await self.finisher.end(ending)

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


class _Run:
    """One job's life in a :class:`BatchWorker`, following arq's ``Worker.run_job``."""

    def __init__(self, worker: BatchWorker, claim: Claim) -> None:
        self.worker = worker
        self.claim = claim
        self.job_try = claim.job_try
        self.function_name = "<unknown>"
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self.enqueue_time_ms = 0
        self.start_ms = timestamp_ms()

    async def run(self) -> Ending:
        worker, claim = self.worker, self.claim
        if claim.data is None:
            log.warning("job expired", job_id=claim.job_id)
            return self._failed(JobExecutionFailed("job expired"))
        try:
            (
                self.function_name,
                self.args,
                self.kwargs,
                enqueue_job_try,
                self.enqueue_time_ms,
            ) = deserialize_job_raw(claim.data, deserializer=worker.job_deserializer)
        except SerializationError as exc:
            log.warning("job cannot be deserialized", job_id=claim.job_id, error=repr(exc))
            return self._failed(exc)
        function = worker.functions.get(self.function_name)
        if not isinstance(function, Function):
            log.warning("job function not found", job_id=claim.job_id, function=self.function_name)
            return self._failed(JobExecutionFailed(f"function {self.function_name!r} not found"))
        if enqueue_job_try and enqueue_job_try > self.job_try:
            self.job_try = enqueue_job_try
            await worker.pool.setex(retry_key_prefix + claim.job_id, 88400, str(self.job_try))
        max_tries = worker.max_tries if function.max_tries is None else function.max_tries
        if self.job_try > max_tries:
            log.warning("job exceeded its tries", job_id=claim.job_id, max_tries=max_tries)
            return self._failed(JobExecutionFailed(f"max {max_tries} retries exceeded"))
        return await self._call(function)

    async def _call(self, function: Function) -> Ending:
        worker, claim = self.worker, self.claim
        ctx = {
            **worker.ctx,
            "job_id": claim.job_id,
            "job_try": self.job_try,
            "enqueue_time": ms_to_datetime(self.enqueue_time_ms),
            "score": claim.score,
        }
        if worker.on_job_start:
            await worker.on_job_start(ctx)
        self.start_ms = timestamp_ms()
        timeout_s = worker.job_timeout_s if function.timeout_s is None else function.timeout_s
        worker._deadlines[claim.job_id] = worker.loop.time() + timeout_s
        try:
            # In this task, not one of its own as in arq: there are no aborts to address it by.
            result = await function.coroutine(ctx, *self.args, **self.kwargs)
        except asyncio.CancelledError:
            if claim.job_id not in worker._timed_out:
                # shutdown, or the task was cancelled: arq runs the job again, at once
                worker.jobs_retried += 1
                ending = Ending(claim.job_id, finished=False)
            else:  # the watchdog's doing: a timeout, which arq fails and does not retry
                worker._timed_out.discard(claim.job_id)
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                ending = self._failure(function, TimeoutError(f"job timed out after {timeout_s} s"))
        except Retry as exc:
            worker.jobs_retried += 1
            defer = exc.defer_score + (timestamp_ms() - claim.score) if exc.defer_score else 0
            ending = Ending(claim.job_id, finished=False, defer_ms=defer)
        except RetryJob:
            worker.jobs_retried += 1
            ending = Ending(claim.job_id, finished=False)
        except Exception as exc:
            ending = self._failure(function, exc)
        else:
            worker.jobs_complete += 1
            ending = self._ended(function, success=True, result=result)
        finally:
            worker._deadlines.pop(claim.job_id, None)
        if worker.on_job_end:
            await worker.on_job_end(ctx)
        return ending

    def _failure(self, function: Function, error: Exception) -> Ending:
        log.warning(
            "job failed", job_id=self.claim.job_id, function=self.function_name, error=repr(error)
        )
        return self._failed(error, function)

    def _failed(self, error: BaseException, function: Function | None = None) -> Ending:
        """A failed job: arq keeps a failed result and removes the job (``function`` is None when
        the job failed before its function was known)."""
        self.worker.jobs_failed += 1
        return self._ended(function, success=False, result=error)

    def _ended(self, function: Function | None, *, success: bool, result: Any) -> Ending:
        """A finished job, with its result kept as the function (else the worker) says."""
        forever, keep_s = self.worker.keep_result_forever, self.worker.keep_result_s
        if function is not None and function.keep_result_forever is not None:
            forever = function.keep_result_forever
        if function is not None and function.keep_result_s is not None:
            keep_s = function.keep_result_s
        return Ending(
            self.claim.job_id,
            finished=True,
            result=self._result(success, result) if forever or keep_s > 0 else None,
            result_ms=0 if forever else int(keep_s * 1000),
        )

    def _result(self, success: bool, result: Any) -> bytes | None:
        return serialize_result(
            self.function_name,
            self.args,
            self.kwargs,
            self.job_try,
            self.enqueue_time_ms,
            success,
            result,
            self.start_ms,
            timestamp_ms(),
            f"{self.claim.job_id}:{self.function_name}",
            self.worker.queue_name,
            job_id=self.claim.job_id,
            serializer=self.worker.job_serializer,
        )
