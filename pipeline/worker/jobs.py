"""The arq job functions: validate, hand rows to the coalescer, and turn each outcome into what
arq should do with the job (complete it, retry it later, or fail it and keep a dead letter)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import structlog
from arq import Retry
from arq.typing import WorkerCoroutine
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.errors import (
    DataError,
    InvalidPayload,
    MissingReference,
    NeverFinished,
    PipelineError,
    TransientError,
    classify,
)
from pipeline.kinds import ATOMIC, atomic
from pipeline.kinds.base import WriteKind
from pipeline.limits import Limits
from pipeline.ops import dead_letters, metrics
from pipeline.receipts import JobResult
from pipeline.serialization import OVERSIZED
from pipeline.settings import Settings
from pipeline.worker import retries
from pipeline.worker.coalescer import Coalescer, Parts
from pipeline.worker.retries import RetryClock
from pipeline.worker.runtime import runtime

log = structlog.get_logger("pipeline.jobs")


#: How a job's keyword arguments become rows: (kwargs, default version) -> (rows by target,
#: whether the job asked to be written first). Raises :class:`InvalidPayload`.
Reader = Callable[[dict[str, Any], int], tuple[Parts, bool]]


def read_kind(kind: WriteKind[Any]) -> Reader:
    """The reader of a write kind's jobs: its payload model, its rows, its one target."""

    def read(kwargs: dict[str, Any], default_version: int) -> tuple[Parts, bool]:
        payload = kind.parse(kwargs)
        # A waiting job keeps its rows and its raw arguments (for a dead letter), not a third
        # copy of its items: the payload is dropped here.
        return [(kind.target, kind.rows(payload, default_version))], kind.urgent(payload)

    return read


class JobRunner:
    """Runs one write job; shared by all job functions of a worker process (its runtime's).

    Every job has one deadline, a little before arq's job timeout, for everything it awaits:
    its commit, its dead letter, the settling of a replay. A job that reaches it goes back to the
    queue with ``Retry``, so no job ever reaches arq's timeout (which arq fails and never retries).
    """

    def __init__(self, settings: Settings, engine: AsyncEngine, coalescer: Coalescer) -> None:
        self.settings = settings
        self.engine = engine
        self.coalescer = coalescer
        self.gate = coalescer.gate
        self.clock = RetryClock(settings)
        self.limits = Limits.of(settings)
        # What is left after the commit wait is for settling: a dead letter, a hand-back.
        self.settle_s = min(2.0, settings.job_timeout_s * 0.25)
        self.commit_wait_s = settings.job_timeout_s - self.settle_s

    async def run(
        self,
        function: str,
        read: Reader,
        ctx: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        atomic: bool = False,
    ) -> JobResult:
        """Validate, write and settle one job, and count what became of it."""
        metrics.IN_FLIGHT.count += 1
        try:
            receipt = await self._run(self._job(function, ctx, kwargs), read, args, atomic)
        except asyncio.CancelledError:
            await self._give_back(ctx)
            raise
        except Exception as exc:
            metrics.job_finished(function, _outcome(exc))
            raise
        finally:
            metrics.IN_FLIGHT.count -= 1
        metrics.job_finished(function, "completed")
        return receipt

    def _job(self, function: str, ctx: dict[str, Any], kwargs: dict[str, Any]) -> _Job:
        deadline = asyncio.get_running_loop().time() + self.commit_wait_s
        return _Job(function, ctx, kwargs, deadline, deadline + self.settle_s * 0.75)

    async def _run(self, job: _Job, read: Reader, args: tuple[Any, ...], atomic: bool) -> JobResult:
        try:
            self._check_runs(job)
            parts, urgent = self._read(job, read, args)
        except (InvalidPayload, NeverFinished) as exc:
            await self._dead_letter(job, exc)
            raise
        except Exception as exc:  # input that trips a bug: set this job aside, the worker goes on
            reason = f"the payload cannot be read ({type(exc).__name__})"
            error = InvalidPayload(f"{job.function}: {reason}")
            await self._dead_letter(job, error)
            raise error from exc
        if not any(rows for _, rows in parts):  # nothing to write: done, without a transaction
            return JobResult(
                batch_id=None, rows=0, applied=0, unchanged=0, jobs=0, committed_at=None
            )
        try:
            async with asyncio.timeout_at(job.deadline):  # no extra task, unlike wait_for
                receipt = await self.coalescer.submit(
                    job.ctx["job_id"], job.function, parts, urgent=urgent, atomic=atomic
                )
        except TimeoutError as exc:
            reason = "PostgreSQL is unreachable" if not self.gate.is_open else "slow commit"
            await self._hand_back(job, TransientError(f"{job.function}: {reason}"), exc)
        except (MissingReference, TransientError) as exc:
            await self._hand_back(job, exc, exc)
        except DataError as exc:
            await self._dead_letter(job, exc)
            raise
        if receipt["batch_id"] is not None:
            metrics.committed(job.enqueue_ms)
        await self._settle_replay(job)
        return await self._with_earlier_runs(job, receipt)

    def _check_runs(self, job: _Job) -> None:
        """A job started more than ``max_tries`` times never finished any of its runs."""
        tries = int(job.ctx["job_try"])
        if tries > self.settings.max_tries:
            raise NeverFinished(
                f"{job.function}: started {tries} times, and every run was cut short (its worker "
                "was killed or stopped, or it timed out)"
            )

    def _read(self, job: _Job, read: Reader, args: tuple[Any, ...]) -> tuple[Parts, bool]:
        kwargs, function = job.kwargs, job.function
        if OVERSIZED in kwargs:
            self.limits.check_bytes(function, kwargs[OVERSIZED])
        if args:
            raise InvalidPayload(
                f"{function} takes keyword arguments only, got {len(args)} positional"
            )
        parts, urgent = read(kwargs, job.enqueue_ms * 1000)
        self.limits.check_items(function, sum(len(rows) for _, rows in parts))
        return parts, urgent

    async def _with_earlier_runs(self, job: _Job, receipt: JobResult) -> JobResult:
        """The receipt, counting the rows earlier runs of the job applied (runs that ended on a
        missing reference commit their other rows). Only a job that may have run before — its
        score is not its enqueue time — asks Redis."""
        if int(job.ctx.get("score") or job.enqueue_ms) == job.enqueue_ms:
            return receipt
        try:
            timeout_s = max(job.last_moment - asyncio.get_running_loop().time(), 0.0)
            earlier = await self.clock.applied(job.ctx["redis"], job.ctx["job_id"], timeout_s)
        except Exception as exc:  # the receipt then counts this run only
            log.warning("earlier runs not counted", job_id=job.ctx["job_id"], error=repr(exc))
            return receipt
        if not earlier:
            return receipt
        applied = min(receipt["rows"], receipt["applied"] + earlier)
        return JobResult({**receipt, "applied": applied, "unchanged": receipt["rows"] - applied})

    async def _hand_back(self, job: _Job, error: PipelineError, cause: BaseException) -> NoReturn:
        """Send the job back to the queue with ``Retry`` (its try given back), or dead-letter it
        once its retry clock has run out."""
        try:
            async with asyncio.timeout_at(job.last_moment):
                back = await self.clock.hand_back(job.ctx["redis"], job.ctx["job_id"], error)
        except Exception as exc:  # Redis failed: retry anyway (this run may then cost a try)
            log.warning("retry clock not updated", job_id=job.ctx["job_id"], error=repr(exc))
            raise Retry(defer=self.clock.delay(error, 1)) from cause
        if not back.give_up:
            _log_hand_back(job, error, back.returns, back.defer_s)
            raise Retry(defer=back.defer_s) from cause
        job.tries = back.returns
        final = _gave_up(error, back.waited_s)
        await self._dead_letter(job, final, tries_given_back=True)
        raise final from cause

    async def _give_back(self, ctx: dict[str, Any], timeout_s: float = 0.5) -> None:
        """Give back the try of a run that ends with no fault of the job's; best effort."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.clock.give_back(ctx["redis"], ctx["job_id"])
        except Exception as exc:  # the run then costs a try, which max_tries allows for
            log.debug("try not given back", job_id=ctx["job_id"], error=repr(exc))

    async def _settle_replay(self, job: _Job) -> None:
        """A replayed dead letter that succeeded is deleted; if that cannot be done now, the job
        runs again (its writes are idempotent) rather than leave the letter behind."""
        try:
            async with asyncio.timeout_at(job.last_moment):
                await dead_letters.resolve(self.engine, job.ctx["job_id"])
        except Exception as exc:
            self.gate.suspect()
            await self._hand_back(job, TransientError(f"{job.function}: {exc!r}"), exc)

    async def _dead_letter(
        self, job: _Job, error: PipelineError, *, tries_given_back: bool = False
    ) -> None:
        """Record the job's dead letter (or hand the job back while that cannot be done)."""
        await self.keep_dead_letter(
            job.ctx,
            function=job.function,
            payload=job.kwargs,
            error=error,
            tries=job.tries,
            last_moment=job.last_moment,
            tries_given_back=tries_given_back,
        )
        metrics.dead_lettered(job.function, type(error).__name__)

    async def keep_dead_letter(
        self,
        ctx: dict[str, Any],
        *,
        function: str,
        payload: dict[str, Any],
        error: PipelineError,
        tries: int,
        raw: bytes | None = None,
        last_moment: float | None = None,
        tries_given_back: bool = False,
    ) -> None:
        """Record a job's dead letter before ``last_moment`` (by default, before the job's
        timeout). While that cannot be done (PostgreSQL unreachable), the job goes back to the
        queue instead, its try given back: a dead letter is never lost, only late. The letter's id
        is kept on ``error``, for the job's failed result."""
        if last_moment is None:
            last_moment = asyncio.get_running_loop().time() + self.commit_wait_s
        try:
            async with asyncio.timeout_at(last_moment):
                if not await self.gate.wait_open():
                    raise TransientError("PostgreSQL is unreachable")
                error.dead_letter_id = await dead_letters.keep(
                    self.engine,
                    job_id=ctx["job_id"],
                    function=function,
                    payload=payload,
                    error=error,
                    tries=tries,
                    raw=raw,
                )
        except Exception as exc:
            log.warning("dead letter not recorded, job will run again", error=repr(classify(exc)))
            self.gate.suspect()
            if not tries_given_back:
                await self._give_back(ctx)
            raise Retry(defer=self.settings.transient_retry_delay_s) from exc
        log.warning(
            "job dead-lettered",
            job_id=ctx["job_id"],
            function=function,
            tries=tries,
            error=type(error).__name__,
            reason=str(error),
        )


@dataclass(slots=True)
class _Job:
    """One run of a job, as the runner sees it."""

    function: str
    ctx: dict[str, Any]
    kwargs: dict[str, Any]
    deadline: float  # loop time by which its commit must have come
    last_moment: float  # loop time by which everything else must be done
    tries: int = field(init=False)
    enqueue_ms: int = field(init=False)

    def __post_init__(self) -> None:
        self.tries = int(self.ctx["job_try"])
        self.enqueue_ms = round(self.ctx["enqueue_time"].timestamp() * 1000)


def _log_hand_back(job: _Job, error: PipelineError, returns: int, defer_s: float) -> None:
    """Say why a job goes back to the queue, the first time it does (later times at debug): an
    outage is said once by the database gate, not by every job it holds."""
    level = "info" if returns == 1 and retries.counts(error) else "debug"
    getattr(log, level)(
        "job will run again",
        job_id=job.ctx["job_id"],
        function=job.function,
        error=type(error).__name__,
        reason=str(error)[:300],
        returns=returns,
        defer_s=round(defer_s, 3),
    )


def _gave_up(error: PipelineError, waited_s: float) -> PipelineError:
    """The error a job is dead-lettered with once its retry clock ran out."""
    message = f"{error} (retried for {waited_s:.1f} s while PostgreSQL was reachable)"
    return type(error)(message)


def _outcome(error: Exception) -> str:
    """What became of a job that raised ``error``. ``_run`` re-raises a pipeline error only once
    the job is dead-lettered (and raises ``Retry`` when even that failed)."""
    if isinstance(error, Retry):
        return "retried"
    if isinstance(error, InvalidPayload):
        return "invalid"
    if isinstance(error, PipelineError):
        return "dead_lettered"
    return "failed"


def job_function(kind: WriteKind[Any]) -> WorkerCoroutine:
    """The arq coroutine of a write kind, named after it."""
    metrics.declare_kind(kind.name)
    read = read_kind(kind)

    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> JobResult:
        return await runtime(ctx).jobs.run(kind.name, read, ctx, args, kwargs)

    run.__name__ = run.__qualname__ = kind.name
    run.__doc__ = f"arq job ``{kind.name}``: {kind.payload.__doc__}"
    return run


def atomic_function() -> WorkerCoroutine:
    """The arq coroutine of ``atomic``: several kinds' writes, committed together or not at all."""
    metrics.declare_kind(ATOMIC)

    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> JobResult:
        return await runtime(ctx).jobs.run(ATOMIC, atomic.parts, ctx, args, kwargs, atomic=True)

    run.__name__ = run.__qualname__ = ATOMIC
    run.__doc__ = f"arq job ``{ATOMIC}``: {atomic.Atomic.__doc__}"
    return run
