"""The coalescer: many jobs' rows, one transaction.

Jobs submit rows and wait. A flusher task (one by default) takes everything pending (up to
``batch_max_rows``) and writes it as one transaction: targets in foreign-key order, one sorted,
set-based statement per target. While a flush runs, new submissions queue up and form the next
batch, so batches are small at low load (latency) and large at high load (throughput). This is
group commit: there is no timer and no linger.

After the commit every job in the batch gets a receipt. A transient error retries the batch with
jittered exponential backoff. If PostgreSQL then does not answer a probe, the database gate
(:mod:`pipeline.worker.gate`) closes: the batch goes back to the front of the queue and nothing is
flushed until the gate opens again, so an outage costs the waiting jobs time, never an error (a
job that waits too long hands itself back to arq). If PostgreSQL does answer, every job of the
batch fails with :class:`TransientError` marked ``reachable`` (the job turns it into arq's
``Retry``). A data error splits the batch in halves until the job that causes it is alone;
everything else commits. A :class:`Conflict` (a second, different definition of an immutable
record, in the batch or against a stored row) is such a data error: the bisection commits the
first definition and fails the job of the later one. Rows a statement reports as referring to
missing rows fail their job with :class:`MissingReference` after the rest of the batch committed
(writes are idempotent, so the job's rerun re-applies nothing twice).

Several flushers commit batches side by side. Their batches may share keys and then wait on each
other's row locks, which is why one is the default. The row a job refers to may sit in another
flusher's transaction that had not committed when this one looked. Such a job is not failed: it
is held until every flush that overlapped its own has ended, then written once more at the front
of the queue.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from pipeline.errors import DataError, MissingReference, PipelineError, TransientError, classify
from pipeline.kinds.base import Invalidation, Prepared, Report, Row, Target
from pipeline.ops import metrics
from pipeline.ops.flushes import FlushReport
from pipeline.receipts import JobResult
from pipeline.worker.gate import DatabaseGate
from pipeline.worker.outcomes import Tally, refuse_within, settled, tally

log = structlog.get_logger("pipeline.coalescer")
RECENT_FLUSHES = 10


Parts = list[tuple[Target, list[Row]]]


@dataclass(eq=False)
class Submission:
    """One job's rows waiting for a flush: rows of one target, or of several (``atomic``)."""

    job_id: str
    kind: str
    parts: Parts
    future: asyncio.Future[JobResult]
    atomic: bool = False  # all its rows commit together, or none does
    held: bool = False  # already held once for a concurrent flush (see the module docstring)
    applied_earlier: int = 0  # rows an earlier flush of this job applied (before it was held)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(len(rows) for _, rows in self.parts)


@dataclass
class Flush:
    """What one flush did, for its log line."""

    transactions: int = 0
    retries: int = 0
    outcomes: dict[Submission, JobResult | PipelineError] = field(default_factory=dict)
    batch_ids: list[str] = field(default_factory=list)  # of the transactions that committed
    applied: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # rows, by kind


class Coalescer:
    """Buffers rows from concurrent jobs and commits them together."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_rows: int,
        transient_retries: int,
        backoff_s: float,
        flushers: int = 1,
        gate: DatabaseGate | None = None,
    ) -> None:
        self._engine = engine
        self.gate = gate or DatabaseGate(engine, probe_interval_s=1.0, probe_timeout_s=5.0)
        self._max_rows = max_rows
        self._retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(transient_retries + 1),
            wait=wait_random_exponential(multiplier=backoff_s, max=max(backoff_s * 20, 1.0)),
            before_sleep=_log_retry,
            reraise=True,
        )
        self._pending: deque[Submission] = deque()
        self.pending_rows = 0  # rows of the submissions in ``_pending``
        self._wakeup = asyncio.Event()
        self._flushers = flushers
        self._started = 0  # flushes started so far: each flush's number
        self._active: set[int] = set()  # numbers of the flushes in progress
        self._held: list[tuple[set[int], Submission]] = []  # waiting for these flushes to end
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        #: The last flushes' reports, newest last (what status and the web page show).
        self.recent_flushes: deque[FlushReport] = deque(maxlen=RECENT_FLUSHES)

    @property
    def last_flush(self) -> FlushReport | None:
        """The last flush's report, None before the first."""
        return self.recent_flushes[-1] if self.recent_flushes else None

    def start(self) -> None:
        """Start the flusher tasks."""
        self._tasks = [
            asyncio.create_task(self._run(), name=f"pipeline-flusher-{i}")
            for i in range(self._flushers)
        ]

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush everything pending whose job still waits, then stop the flushers and the gate.

        At most ``timeout_s``: with PostgreSQL gone nothing can be flushed, and the jobs that
        waited for it have been handed back to arq (or cancelled, to run again) by then."""
        deadline = time.monotonic() + timeout_s
        while (self._live_pending() or self._active) and time.monotonic() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.005)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.gate.stop()

    def _live_pending(self) -> bool:
        """Whether a pending submission's job still waits for it."""
        return any(not sub.future.done() for sub in self._pending)

    async def submit(
        self, job_id: str, kind: str, parts: Parts, *, urgent: bool = False, atomic: bool = False
    ) -> JobResult:
        """Queue a job's rows; return its receipt once they are committed.

        An urgent job goes to the front of the queue, so it is in the next transaction even when
        a backlog of full batches waits.
        """
        future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        submission = Submission(job_id, kind, parts, future, atomic=atomic)
        if urgent:
            self._pending.appendleft(submission)
        else:
            self._pending.append(submission)
        self.pending_rows += submission.size
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            self._discard(submission)
            raise

    def _discard(self, submission: Submission) -> None:
        """Forget the rows of a job that stopped waiting (it was handed back to arq or cancelled;
        its rerun submits them again), so that jobs coming and going during an outage do not
        pile up here."""
        try:
            self._pending.remove(submission)
        except ValueError:  # already taken by a flush, which drops it or settles it
            return
        self.pending_rows -= submission.size

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self.gate.wait_open()  # while PostgreSQL is gone, rows wait here
            batch = self._take()
            if not batch:
                continue
            self._started += 1
            number, before = self._started, set(self._active)
            self._active.add(number)
            try:
                await self._flush(batch, number, before)
            except Exception as exc:  # never let the flusher die: fail the batch, keep going
                log.exception("flush failed unexpectedly", jobs=len(batch))
                # Reachable: a failure that keeps recurring uses up the jobs' retry time.
                failure = TransientError(f"flush failed: {exc!r}", reachable=True)
                _settle(dict.fromkeys(batch, failure))
            finally:
                self._active.discard(number)
                self._release_held()

    def _take(self) -> list[Submission]:
        """The next batch: pending submissions in order, up to the row cap (at least one).

        A submission whose job stopped waiting (it gave up and was handed back to arq, or was
        cancelled) is dropped: arq runs that job again, and it submits its rows again.
        """
        batch: list[Submission] = []
        rows = 0
        while self._pending:
            submission = self._pending[0]
            if batch and rows + submission.size > self._max_rows:
                break
            self._pending.popleft()
            self.pending_rows -= submission.size
            if not submission.future.done():
                batch.append(submission)
                rows += submission.size
        return batch

    async def _flush(self, batch: list[Submission], number: int, before: set[int]) -> None:
        started = time.perf_counter()
        flush = Flush()
        await self._commit_isolating(batch, flush)
        requeued = await self._requeue_if_unreachable(flush.outcomes)
        # The flushes that overlapped this one: running when it began, or begun since.
        held = self._hold(flush.outcomes, before | set(range(number + 1, self._started + 1)))
        _settle(flush.outcomes)
        self.batches += 1
        failed = [type(o).__name__ for o in flush.outcomes.values() if isinstance(o, Exception)]
        report = FlushReport(
            batch_id=flush.batch_ids[0] if flush.batch_ids else None,
            jobs=len(batch),
            rows=sum(s.size for s in batch),
            kinds=tuple(sorted({s.kind for s in batch})),
            transactions=flush.transactions,
            retries=flush.retries,
            failed=len(failed),
            held=held,
            requeued=requeued,
            written=dict(flush.applied),
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            at=dt.datetime.now(dt.UTC).isoformat(),
            batch_ids=tuple(flush.batch_ids),
            failures=dict(Counter(failed)),
        )
        self.recent_flushes.append(report)
        log.info("batch flushed", **report.fields())
        metrics.flushed(report)

    async def _requeue_if_unreachable(
        self, outcomes: dict[Submission, JobResult | PipelineError]
    ) -> int:
        """Take the transient failures out of ``outcomes``: back to the front of the queue if
        PostgreSQL does not answer now (the gate closes), else marked ``reachable``."""
        failed = [sub for sub, o in outcomes.items() if isinstance(o, TransientError)]
        if not failed:
            return 0
        if await self.gate.check():
            for sub in failed:
                outcomes[sub] = TransientError(str(outcomes[sub]), reachable=True)
            return 0
        for sub in failed:
            del outcomes[sub]
        self._pending.extendleft(reversed(failed))
        self.pending_rows += sum(sub.size for sub in failed)
        return len(failed)

    def _hold(self, outcomes: dict[Submission, JobResult | PipelineError], others: set[int]) -> int:
        """Take out of ``outcomes`` the missing references another flush may yet commit."""
        if not others:
            return 0
        held = 0
        for sub, outcome in list(outcomes.items()):
            if isinstance(outcome, MissingReference) and not sub.held:
                sub.held = True
                del outcomes[sub]
                self._held.append((others, sub))
                held += 1
        return held

    def _release_held(self) -> None:
        """Queue again, first, the held submissions whose overlapping flushes have all ended."""
        ready = [sub for others, sub in self._held if not others & self._active]
        if not ready:
            return
        self._held = [(others, sub) for others, sub in self._held if others & self._active]
        self._pending.extendleft(reversed(ready))
        self.pending_rows += sum(sub.size for sub in ready)
        self._wakeup.set()

    async def _commit_isolating(self, subs: list[Submission], flush: Flush) -> None:
        """Commit ``subs``; on a data error, split until the failing job is alone."""
        try:
            batch_id, tallies = await self._commit_with_retries(subs, flush)
        except (DataError, MissingReference) as exc:
            if len(subs) == 1:
                flush.outcomes[subs[0]] = exc
                return
            middle = len(subs) // 2
            await self._commit_isolating(subs[:middle], flush)
            await self._commit_isolating(subs[middle:], flush)
            return
        except TransientError as exc:
            flush.outcomes.update(dict.fromkeys(subs, exc))
            return
        committed_at = dt.datetime.now(dt.UTC).isoformat()
        flush.batch_ids.append(batch_id)
        for sub, done in zip(subs, tallies, strict=True):
            flush.applied[sub.kind] += done.applied
            result = settled(sub.kind, done, sub.applied_earlier, batch_id, len(subs), committed_at)
            if isinstance(result, MissingReference):
                sub.applied_earlier = result.applied  # if it is held and written again
            flush.outcomes[sub] = result

    async def _commit_with_retries(
        self, subs: list[Submission], flush: Flush
    ) -> tuple[str, list[Tally]]:
        groups: dict[Target, list[list[Row]]] = defaultdict(list)
        for sub in subs:
            for target, rows in sub.parts:
                groups[target].append(rows)
        plan = [
            (target, target.prepare(rows))
            for target, rows in sorted(groups.items(), key=lambda g: g[0].order)
        ]
        atomic = [sub.parts for sub in subs if sub.atomic]
        async for attempt in self._retrying.copy():
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    flush.retries += 1
                flush.transactions += 1
                batch_id, reports = await self._transaction(plan, atomic)
        return batch_id, tally([sub.parts for sub in subs], dict(plan), reports)

    async def _transaction(
        self, plan: list[tuple[Target, Prepared]], atomic: list[Parts]
    ) -> tuple[str, dict[Target, Report]]:
        """One transaction: every target's statement, then the invalidations they call for."""
        reports: dict[Target, Report] = {}
        touched: dict[Invalidation, list[Row]] = defaultdict(list)
        try:
            async with self._engine.begin() as conn:
                for target, prep in plan:
                    report = await target.write(conn, prep.rows)
                    refuse_within(target, report, atomic)  # inside: it rolls back
                    reports[target] = report
                    if target.invalidates is not None:
                        keys = touched[target.invalidates]
                        keys.extend(target.touched(prep.rows))
                        keys.extend(report.touched)
                for invalidation, keys in sorted(touched.items(), key=lambda i: i[0].name):
                    await invalidation.run(conn, keys)
        except PipelineError:
            raise
        except Exception as exc:
            raise classify(exc) from exc
        return uuid.uuid4().hex, reports


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("batch retry", attempt=state.attempt_number, error=str(error))


def _settle(outcomes: dict[Submission, JobResult | PipelineError]) -> None:
    for sub, outcome in outcomes.items():
        if sub.future.done():  # the job was cancelled meanwhile; its rerun is idempotent
            continue
        if isinstance(outcome, Exception):
            sub.future.set_exception(outcome)
        else:
            sub.future.set_result(outcome)
