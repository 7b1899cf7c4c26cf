"""The coalescer against an in-memory database: bisection, retries, holds, order, batch size, close.

The fake engine has the surface the coalescer and its gate use (``begin()``, ``connect()``,
``execute``); the target is a real :class:`Target` whose statement the fake connection runs: an
upsert by version that reports, like the real statements, the keys it did not apply.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import pytest
from sqlalchemy import TextClause
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.errors import DataError, TransientError
from pipeline.kinds.base import Row, Target, newest
from pipeline.ops.flushes import FlushReport
from pipeline.receipts import JobResult
from pipeline.worker.coalescer import RECENT_FLUSHES, Coalescer
from pipeline.worker.gate import DatabaseGate

BAD = "violates the check"  # a value the fake table's check constraint refuses
VERSION = 3  # index of the version in an item row

ITEMS = Target(
    name="items",
    table="projects",  # a table of the schema; the fake connection never reads it
    columns=(("key", "text"), ("parent", "text"), ("value", "text"), ("version", "bigint")),
    key=("key",),
    sql="INSERT INTO items SELECT * FROM {rows} ON CONFLICT (key) DO UPDATE SET value = v.value",
    merge=newest("version"),
    reports=True,
)


def item(key: str, value: str = "v", version: int = 1, parent: str | None = None) -> Row:
    return (key, parent, value, version)


def driver_error(
    kind: type[sa_exc.DBAPIError], error: asyncpg.exceptions.PostgresError
) -> sa_exc.DBAPIError:
    """An asyncpg error as SQLAlchemy raises it from ``conn.execute``."""
    return kind("INSERT INTO items …", {}, error)


class Stall:
    """Holds a statement mid-transaction (after its rows are written) until released."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()


class FakeResult:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows

    def all(self) -> list[tuple[Any, ...]]:
        return self._rows


class FakeConnection:
    """One transaction: rows it wrote are visible to it only until it commits."""

    def __init__(self, db: FakeDatabase) -> None:
        self.db = db
        self.staged: dict[str, Row] = {}

    def _visible(self, key: str) -> Row | None:
        return self.staged.get(key) or self.db.stored.get(key)

    async def execute(self, statement: TextClause, params: dict[str, Any] | None = None) -> Any:
        db = self.db
        if statement is not ITEMS.statements[-1]:  # the gate's SELECT 1
            return FakeResult([])
        assert params is not None
        rows = list(zip(*params.values(), strict=True))
        db.statements.append([row[0] for row in rows])
        if db.transient:
            db.transient -= 1
            raise driver_error(
                sa_exc.OperationalError, asyncpg.exceptions.SerializationError("could not")
            )
        if any(row[2] == BAD for row in rows):
            raise driver_error(
                sa_exc.IntegrityError, asyncpg.exceptions.CheckViolationError("items_value_check")
            )
        report: list[tuple[Any, ...]] = []
        for row in rows:
            key, parent = row[0], row[1]
            old = self._visible(key)
            if parent is not None and self._visible(parent) is None:
                report.append(("missing", key))
            elif old is not None and old[VERSION] >= row[VERSION]:
                report.append(("unchanged", key))
            else:
                self.staged[key] = row
        for key in [row[0] for row in rows if row[0] in db.stalls]:
            stall = db.stalls.pop(key)
            stall.entered.set()
            await stall.release.wait()
        return FakeResult(report)


class FakeDatabase:
    """What the coalescer uses of an ``AsyncEngine``, over a dict of committed rows."""

    def __init__(self) -> None:
        self.stored: dict[str, Row] = {}
        self.statements: list[list[str]] = []  # the keys each statement was sent, in order
        self.begun = self.committed = self.rolled_back = 0
        self.transient = 0  # statements still to fail with a serialization failure
        self.down = False  # refuse connections
        self.stalls: dict[str, Stall] = {}
        self.every_stall: list[Stall] = []

    def stall(self, key: str) -> Stall:
        """Stall the first statement that writes ``key``."""
        stall = self.stalls[key] = Stall()
        self.every_stall.append(stall)
        return stall

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[FakeConnection]:
        if self.down:
            raise ConnectionRefusedError("connection refused")
        self.begun += 1
        conn = FakeConnection(self)
        try:
            yield conn
        except BaseException:
            self.rolled_back += 1
            raise
        for key, row in conn.staged.items():  # the upsert's version rule, as of commit
            old = self.stored.get(key)
            if old is None or row[VERSION] > old[VERSION]:
                self.stored[key] = row
        self.committed += 1

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[FakeConnection]:
        if self.down:
            raise ConnectionRefusedError("connection refused")
        yield FakeConnection(self)


class Flushes(deque[FlushReport]):
    """A coalescer's recent flushes, with an event for each one recorded."""

    def __init__(self) -> None:
        super().__init__(maxlen=RECENT_FLUSHES)
        self.recorded = 0
        self.changed = asyncio.Event()

    def append(self, summary: FlushReport) -> None:
        super().append(summary)
        self.recorded += 1
        self.changed.set()


Make = Callable[..., Coalescer]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Build coalescers on fake databases; each is closed (its stalls released) afterwards."""
    made: list[tuple[Coalescer, FakeDatabase]] = []

    def build(db: FakeDatabase, **options: Any) -> Coalescer:
        options = {"max_rows": 100, "transient_retries": 0, "backoff_s": 0.001, **options}
        coalescer = Coalescer(cast(AsyncEngine, db), **options)
        coalescer.recent_flushes = Flushes()
        made.append((coalescer, db))
        return coalescer

    yield build
    for coalescer, db in made:
        for stall in db.every_stall:
            stall.release.set()
        await coalescer.close(timeout_s=1.0)


def submit(
    coalescer: Coalescer, job_id: str, rows: Sequence[Row], *, urgent: bool = False
) -> asyncio.Task[JobResult]:
    return asyncio.create_task(
        coalescer.submit(job_id, "items", [(ITEMS, list(rows))], urgent=urgent)
    )


async def outcomes(tasks: Sequence[Awaitable[JobResult]]) -> list[JobResult | BaseException]:
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)


async def flushed(coalescer: Coalescer, count: int) -> None:
    """Wait until ``count`` flushes have ended."""
    flushes = coalescer.recent_flushes
    assert isinstance(flushes, Flushes)
    async with asyncio.timeout(2):
        while flushes.recorded < count:
            flushes.changed.clear()
            await flushes.changed.wait()


def receipts(results: Sequence[JobResult | BaseException]) -> Iterator[JobResult]:
    for result in results:
        assert not isinstance(result, BaseException), repr(result)
        yield result


@pytest.mark.parametrize(("jobs", "bad"), [(8, 0), (8, 5), (8, 7), (13, 12), (13, 2)])
async def test_a_data_error_fails_only_its_job_and_bisection_commits_the_rest(
    make: Make, jobs: int, bad: int
) -> None:
    db = FakeDatabase()
    coalescer = make(db)
    tasks = [
        submit(coalescer, f"j{i}", [item(f"k{i:02}", BAD if i == bad else f"v{i}")])
        for i in range(jobs)
    ]
    await asyncio.sleep(0)  # every job is pending before the first flush takes them
    coalescer.start()
    results = await outcomes(tasks)

    assert isinstance(results[bad], DataError) and "items_value_check" in str(results[bad])
    good = list(receipts(results[:bad] + results[bad + 1 :]))
    assert all(r["applied"] == 1 and r["rows"] == 1 for r in good)
    assert db.stored == {f"k{i:02}": item(f"k{i:02}", f"v{i}") for i in range(jobs) if i != bad}
    summary = coalescer.last_flush
    assert summary is not None and coalescer.batches == 1
    # Each split of a failing part commits one half and splits the other: one transaction for
    # the whole batch, then two per level, at most ceil(log2 N) levels deep.
    depth = math.ceil(math.log2(jobs))
    assert summary.transactions == db.begun <= 1 + 2 * depth
    if jobs == 2**depth:  # a power of two: the bad job is always exactly depth levels down
        assert db.begun == 1 + 2 * depth
    assert db.rolled_back == db.committed + 1  # the whole batch, then one half of each split
    assert {r["batch_id"] for r in good} == set(summary.batch_ids)
    assert len(summary.batch_ids) == db.committed
    assert summary.failed == 1 and summary.failures == {"DataError": 1}


@pytest.mark.parametrize("failures", [2, 3])
async def test_a_transient_error_retries_the_whole_batch_then_fails_each_job_as_reachable(
    make: Make, failures: int
) -> None:
    db = FakeDatabase()
    db.transient = failures
    coalescer = make(db, transient_retries=2)
    tasks = [submit(coalescer, f"j{i}", [item(f"k{i}")]) for i in range(3)]
    await asyncio.sleep(0)
    coalescer.start()
    results = await outcomes(tasks)

    summary = coalescer.last_flush
    assert summary is not None and coalescer.batches == 1
    # Every attempt is the whole batch again (no bisection for a transient error).
    assert db.statements == [["k0", "k1", "k2"]] * 3
    assert summary.transactions == 3 and summary.retries == 2
    if failures == 2:  # the last allowed attempt commits
        done = list(receipts(results))
        assert len({r["batch_id"] for r in done}) == 1 and all(r["jobs"] == 3 for r in done)
        assert set(db.stored) == {"k0", "k1", "k2"}
    else:  # retries used up while PostgreSQL answers: every job fails, marked reachable
        assert all(isinstance(r, TransientError) and r.reachable for r in results)
        assert db.stored == {} and db.committed == 0
        assert summary.failures == {"TransientError": 3} and summary.requeued == 0
        assert coalescer.gate.is_open


async def test_an_unreachable_database_keeps_the_batch_until_it_answers(make: Make) -> None:
    db = FakeDatabase()
    db.down = True
    gate = DatabaseGate(cast(AsyncEngine, db), probe_interval_s=0.005, probe_timeout_s=1.0)
    closed = asyncio.Event()
    gate.on_change(lambda is_open: None if is_open else closed.set())
    coalescer = make(db, transient_retries=1, gate=gate)
    tasks = [submit(coalescer, f"j{i}", [item(f"k{i}")]) for i in range(2)]
    await asyncio.sleep(0)
    coalescer.start()
    await asyncio.wait_for(closed.wait(), 2)

    first = coalescer.last_flush
    assert first is not None and first.transactions == 2
    assert first.requeued == 2 and first.failed == 0
    assert not any(task.done() for task in tasks)  # the jobs wait, they are not failed
    db.down = False
    done = list(receipts(await outcomes(tasks)))
    assert coalescer.batches == 2 and len({r["batch_id"] for r in done}) == 1
    assert set(db.stored) == {"k0", "k1"}


async def test_a_row_whose_parent_is_in_a_concurrent_flush_is_held_until_that_flush_ends(
    make: Make,
) -> None:
    db = FakeDatabase()
    stall = db.stall("p")
    coalescer = make(db, flushers=2)
    coalescer.start()
    parent = submit(coalescer, "parent", [item("p")])
    await asyncio.wait_for(stall.entered.wait(), 2)  # "p" written, not committed
    child = submit(coalescer, "child", [item("b"), item("c", parent="p")])
    await flushed(coalescer, 1)
    newer = submit(coalescer, "newer", [item("c", "v2", version=2, parent="p")])
    await flushed(coalescer, 2)

    assert [s.held for s in coalescer.recent_flushes] == [1, 1]
    assert [s.failed for s in coalescer.recent_flushes] == [0, 0]
    assert not child.done() and not newer.done()
    assert db.stored == {"b": item("b")}  # the child's other row committed meanwhile
    stall.release.set()
    first, second, third = receipts(await outcomes([parent, child, newer]))

    # Both held jobs were written again together once the parent's flush ended.
    assert [s.held for s in coalescer.recent_flushes] == [1, 1, 0, 0]
    assert coalescer.batches == 4 and coalescer.recent_flushes[-1].jobs == 2
    assert second["batch_id"] == third["batch_id"] != first["batch_id"]
    assert db.stored == {"p": item("p"), "b": item("b"), "c": item("c", "v2", 2, "p")}
    # "b" counts as applied by its first flush; its "c" was superseded by the newer one.
    assert (second["applied"], second["unchanged"]) == (1, 1)
    assert (third["applied"], third["unchanged"]) == (1, 0)


async def test_an_urgent_submission_goes_into_the_next_batch_ahead_of_earlier_ones(
    make: Make,
) -> None:
    db = FakeDatabase()
    stall = db.stall("first")
    coalescer = make(db, max_rows=2)
    coalescer.start()
    tasks = [submit(coalescer, "first", [item("first")])]
    await asyncio.wait_for(stall.entered.wait(), 2)
    tasks += [submit(coalescer, key, [item(key)]) for key in ("a", "b")]
    tasks.append(submit(coalescer, "u", [item("u")], urgent=True))
    await asyncio.sleep(0)  # all three pending behind the running flush
    stall.release.set()
    done = list(receipts(await outcomes(tasks)))

    assert db.statements == [["first"], ["a", "u"], ["b"]]
    assert done[3]["batch_id"] == done[1]["batch_id"] != done[2]["batch_id"]


async def test_a_flush_takes_at_most_max_rows_and_a_larger_submission_alone(make: Make) -> None:
    db = FakeDatabase()
    stall = db.stall("s0")
    coalescer = make(db, max_rows=3)
    coalescer.start()
    tasks = [submit(coalescer, "j0", [item("s0")])]
    await asyncio.wait_for(stall.entered.wait(), 2)
    sizes = [2, 2, 1, 5, 1]
    tasks += [
        submit(coalescer, f"j{i}", [item(f"s{i}-{n}") for n in range(size)])
        for i, size in enumerate(sizes, start=1)
    ]
    await asyncio.sleep(0)
    stall.release.set()
    done = list(receipts(await outcomes(tasks)))

    # In order, as many as fit; the 5-row submission does not fit any batch and goes alone.
    flushes = [(s.jobs, s.rows) for s in coalescer.recent_flushes]
    assert flushes == [(1, 1), (1, 2), (2, 3), (1, 5), (1, 1)]
    assert [len(keys) for keys in db.statements] == [1, 2, 3, 5, 1]
    assert [r["applied"] for r in done] == [1, *sizes]
    assert len(db.stored) == 1 + sum(sizes)


async def test_close_flushes_what_is_pending_and_held_and_leaves_no_job_waiting(
    make: Make,
) -> None:
    db = FakeDatabase()
    parent_stall, slow_stall, later_stall = db.stall("p"), db.stall("s"), db.stall("l0")
    coalescer = make(db, flushers=2)
    coalescer.start()
    parent = submit(coalescer, "parent", [item("p")])
    await asyncio.wait_for(parent_stall.entered.wait(), 2)
    child = submit(coalescer, "child", [item("c", parent="p")])
    await flushed(coalescer, 1)
    assert coalescer.last_flush is not None and coalescer.last_flush.held == 1
    slow = submit(coalescer, "slow", [item("s")])
    await asyncio.wait_for(slow_stall.entered.wait(), 2)  # both flushers busy now
    later = [submit(coalescer, f"later{i}", [item(f"l{i}")]) for i in range(3)]
    await asyncio.sleep(0)
    assert coalescer.pending_rows == 3

    closing = asyncio.create_task(coalescer.close(timeout_s=2.0))
    await asyncio.sleep(0.01)
    assert not closing.done()  # it waits for the running flushes
    parent_stall.release.set()
    slow_stall.release.set()
    await asyncio.wait_for(later_stall.entered.wait(), 2)  # nothing pending, a flush running
    await asyncio.sleep(0.01)
    assert not closing.done()
    later_stall.release.set()
    await asyncio.wait_for(closing, 2)

    tasks = [parent, child, slow, *later]
    finished, waiting = await asyncio.wait(tasks, timeout=0.5)
    assert not waiting, f"{len(waiting)} jobs still wait after close()"
    assert all(isinstance(task.result(), dict) for task in finished)
    assert set(db.stored) == {"p", "c", "s", "l0", "l1", "l2"}
    assert coalescer.pending_rows == 0
