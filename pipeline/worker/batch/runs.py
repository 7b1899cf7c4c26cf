"""A claimed job's run and its ending in a :class:`~pipeline.worker.batch.claiming.BatchWorker`.

:class:`JobRun` follows arq's ``Worker.run_job`` rule for rule and line for line: the same
checks in the same order, the same counters, hooks, results and per-job log lines on arq's own
``arq.worker`` logger. Only the end differs: instead of a Redis transaction per job, the ending
goes to the :class:`Finisher`, which writes the endings of every job that ends meanwhile in one
script (group commit).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import arq.worker
import structlog
from arq.constants import retry_key_prefix
from arq.cron import CronJob
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import args_to_string, ms_to_datetime, timestamp_ms, to_ms, truncate
from arq.worker import Function, JobExecutionFailed, Retry, RetryJob
from arq.worker import logger as arq_log
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from pipeline.worker.batch.scripts import FINISH

if TYPE_CHECKING:
    from pipeline.worker.batch.claiming import BatchWorker, ClaimedJob

log = structlog.get_logger("pipeline.worker")


@dataclass(frozen=True, slots=True)
class Ending:
    """How a job leaves the worker: finished (with a result to keep), or queued to run again."""

    job_id: str
    finished: bool
    result: bytes | None = None
    result_ms: int = 0
    defer_ms: int = 0
    #: How long the in-progress key stays (0: it is deleted); arq keeps a cron job's a while.
    keep_in_progress_ms: int = 0

    def args(self) -> tuple[str | bytes | int, ...]:
        """This ending's six values of the FINISH script (a finished job has no defer, a job
        to run again no result)."""
        action, keep = "f" if self.finished else "r", self.keep_in_progress_ms
        return (self.job_id, action, self.defer_ms, self.result_ms, self.result or b"", keep)


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


class JobRun:
    """One job's life in a :class:`BatchWorker`, following arq's ``Worker.run_job``."""

    def __init__(self, worker: BatchWorker, claim: ClaimedJob) -> None:
        self.worker = worker
        self.claim = claim
        self.job_try = claim.job_try
        self.function_name = "<unknown>"
        self.ref = f"{claim.job_id}:<unknown>"
        self.args: tuple[Any, ...] = ()
        self.kwargs: dict[str, Any] = {}
        self.enqueue_time_ms = 0
        self.start_ms = timestamp_ms()
        self.keep_in_progress_ms = 0
        #: The job's context once its function was called (``after_job_end`` gets it then).
        self.ctx: dict[str, Any] | None = None
        # arq's INFO lines cost a repr of every argument: only when someone reads them.
        self.job_lines = worker.log_jobs and arq_log.isEnabledFor(logging.INFO)

    async def run(self) -> Ending:
        worker, claim = self.worker, self.claim
        if claim.data is None:
            arq_log.warning("job %s expired", claim.job_id)
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
            arq_log.exception("deserializing job %s failed", claim.job_id)
            return self._failed(exc)
        self.ref = f"{claim.job_id}:{self.function_name}"
        if claim.aborted:
            if self.job_lines:
                arq_log.info(
                    "%6.2fs ⊘ %s:%s aborted before start",
                    self._since(self.enqueue_time_ms),
                    claim.job_id,
                    self.function_name,
                )
            return self._failed(asyncio.CancelledError())
        function = worker.functions.get(self.function_name)
        if function is None:
            arq_log.warning("job %s, function %r not found", claim.job_id, self.function_name)
            return self._failed(JobExecutionFailed(f"function {self.function_name!r} not found"))
        if isinstance(function, CronJob):
            self.ref = self.function_name
            # looked up at each use, as arq's run_job does (its tests patch it there)
            keep_s: float = getattr(arq.worker, "keep_cronjob_progress")  # noqa: B009
            self.keep_in_progress_ms = to_ms(keep_s)
        if enqueue_job_try and enqueue_job_try > self.job_try:
            self.job_try = enqueue_job_try
            await worker.pool.setex(retry_key_prefix + claim.job_id, 88400, str(self.job_try))
        max_tries = worker.max_tries if function.max_tries is None else function.max_tries
        if self.job_try > max_tries:
            arq_log.warning(
                "%6.2fs ! %s max retries %d exceeded",
                self._since(self.enqueue_time_ms),
                self.ref,
                max_tries,
            )
            # arq ends these as it ends jobs that never ran: the in-progress key goes too
            self.keep_in_progress_ms = 0
            return self._failed(JobExecutionFailed(f"max {max_tries} retries exceeded"))
        return await self._call(function)

    async def _call(self, function: Function | CronJob) -> Ending:
        worker, claim = self.worker, self.claim
        self.ctx = ctx = {
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
        if self.job_lines:
            self._log_start()
        try:
            with worker.running(claim.job_id, timeout_s):
                result = await function.coroutine(ctx, *self.args, **self.kwargs)
            result_str = self._result_str(result) if self.job_lines else ""
        except (Exception, asyncio.CancelledError) as exc:
            ending = self._raised(function, exc, timeout_s)
        else:
            worker.jobs_complete += 1
            if self.job_lines:
                arq_log.info("%6.2fs ← %s ● %s", self._since(self.start_ms), self.ref, result_str)
            ending = self._ended(function, success=True, result=result)
        if worker.on_job_end:
            await worker.on_job_end(ctx)
        return ending

    def _raised(self, function: Function | CronJob, exc: BaseException, timeout_s: float) -> Ending:
        """The ending of a function that raised ``exc``, decided as arq decides it."""
        worker, job_id = self.worker, self.claim.job_id
        cancelled = isinstance(exc, asyncio.CancelledError)
        if cancelled and worker.timed_out(job_id):  # the watchdog's: a timeout, as in arq
            self._uncancel()
            exc = TimeoutError(f"job timed out after {timeout_s} s")
            cancelled = False
        extra = _extra(exc)
        took = self._since(self.start_ms)
        if worker.retry_jobs and isinstance(exc, Retry):
            worker.jobs_retried += 1
            if self.job_lines:
                in_s = (exc.defer_score or 0) / 1000
                arq_log.info("%6.2fs ↻ %s retrying job in %0.2fs", took, self.ref, in_s)
            defer = exc.defer_score + (timestamp_ms() - self.claim.score) if exc.defer_score else 0
            return self._again(defer)
        if cancelled and job_id in worker.aborting_tasks:
            worker.aborting_tasks.remove(job_id)
            self._uncancel()
            if self.job_lines:
                arq_log.info("%6.2fs ⊘ %s aborted", took, self.ref)
            worker.jobs_failed += 1
            return self._ended(function, success=False, result=exc)
        if worker.retry_jobs and (cancelled or isinstance(exc, RetryJob)):
            # shutdown, or the task was cancelled: arq runs the job again, at once
            worker.jobs_retried += 1
            if self.job_lines:
                arq_log.info("%6.2fs ↻ %s cancelled, will be run again", took, self.ref)
            return self._again(0)
        arq_log.exception(
            "%6.2fs ! %s failed, %s: %s",
            took,
            self.ref,
            exc.__class__.__name__,
            exc,
            extra={"extra": extra},
            exc_info=exc,
        )
        worker.jobs_failed += 1
        return self._ended(function, success=False, result=exc)

    def _log_start(self) -> None:
        start_ms, score = self.start_ms, self.claim.score
        extra = f" try={self.job_try}" if self.job_try > 1 else ""
        if start_ms - score > 1200:
            extra += f" delayed={(start_ms - score) / 1000:0.2f}s"
        arq_log.info(
            "%6.2fs → %s(%s)%s",
            self._since(self.enqueue_time_ms),
            self.ref,
            args_to_string(self.args, self.kwargs),
            extra,
        )

    def _result_str(self, result: Any) -> str:
        return "" if result is None or not self.worker.log_results else truncate(repr(result))

    @staticmethod
    def _since(ms: int) -> float:
        return (timestamp_ms() - ms) / 1000

    @staticmethod
    def _uncancel() -> None:
        """The cancel was this worker's own (timeout, abort) and is handled: the task goes on."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()

    def _again(self, defer_ms: int) -> Ending:
        return Ending(
            self.claim.job_id,
            finished=False,
            defer_ms=defer_ms,
            keep_in_progress_ms=self.keep_in_progress_ms,
        )

    def _failed(self, error: BaseException) -> Ending:
        """A job that failed before its function ran: arq keeps the worker's kind of result."""
        self.worker.jobs_failed += 1
        return self._ended(None, success=False, result=error)

    def _ended(self, function: Function | CronJob | None, *, success: bool, result: Any) -> Ending:
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
            keep_in_progress_ms=self.keep_in_progress_ms,
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
            self.ref,
            self.worker.queue_name,
            job_id=self.claim.job_id,
            serializer=self.worker.job_serializer,
        )


def _extra(exc: BaseException) -> Any:
    """What arq logs beside a failure: the exception's ``extra`` (called, if it is callable)."""
    extra = getattr(exc, "extra", None)
    return extra() if callable(extra) else extra
