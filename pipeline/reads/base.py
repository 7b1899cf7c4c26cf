"""What every read repository shares: where its statements run, retries, metrics, keyset pages.

A repository reads through an engine (each read checks out a connection of its own, so it can
point at a replica) or through a session (reads run in the session's transaction and see its
uncommitted writes). Repositories never commit and never write, except where one says so.

Every public read of a repository is timed (``pipeline_read_duration_seconds{query=…}``, see
:mod:`pipeline.reads.metrics`) and, with an engine, run once more on a fresh connection when
its connection turns out to be dropped (a restarted or failed-over server, a terminated
backend): the pool then discards every connection older than the failure. A read of a stream
is retried only while it has yielded nothing. With a session there is no retry: the dropped
connection took the caller's transaction with it, which only the caller can redo.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from sqlalchemy import Executable, RowMapping, Select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from pipeline.reads.metrics import POOLS, READ_ERRORS, READ_RETRIES, READ_SECONDS
from pipeline.reads.models import Page

Source = AsyncEngine | AsyncSession

_Item = TypeVar("_Item")
_Cursor = TypeVar("_Cursor")


# Set while a public read runs, so a read that calls another is timed and retried once, as a whole.
_IN_READ: ContextVar[bool] = ContextVar("pipeline_in_read", default=False)


def _dropped(error: BaseException) -> bool:
    return isinstance(error, DBAPIError) and error.connection_invalidated


class ReadRepository:
    """Base of the read repositories: holds the source and runs statements on it.

    Subclasses' public coroutine methods (and async generator methods) are wrapped for metrics
    and the retry of a dropped connection when the class is defined; ``query_prefix`` names
    them in the metrics (``taxonomy.subtree``).
    """

    query_prefix = "read"

    def __init__(self, source: Source) -> None:
        self._source = source
        if isinstance(source, AsyncEngine):
            POOLS.watch(source, "read")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if name.startswith("_") or getattr(member, "_pipeline_read", False):
                continue
            query = f"{cls.query_prefix}.{name}"
            if inspect.isasyncgenfunction(member):
                setattr(cls, name, _streamed(member, query))
            elif inspect.iscoroutinefunction(member):
                setattr(cls, name, _measured(member, query))

    def _retries(self) -> bool:
        return isinstance(self._source, AsyncEngine)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        if isinstance(self._source, AsyncSession):
            yield await self._source.connection()
        else:
            async with self._source.connect() as conn:
                yield conn

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose statements all see one snapshot of the database.

        With an engine, a REPEATABLE READ, READ ONLY transaction of its own (rolled back at the
        end); with a session, the session's transaction, whatever its isolation level.
        """
        if isinstance(self._source, AsyncSession):
            yield await self._source.connection()
        else:
            async with self._source.connect() as conn:
                await conn.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
                yield conn

    async def _rows(self, statement: Executable) -> list[RowMapping]:
        async with self._connection() as conn:
            return await fetch(conn, statement)


def _measured(read: Callable[..., Any], query: str) -> Callable[..., Any]:
    seconds = READ_SECONDS.labels(query)

    @functools.wraps(read)
    async def measured(self: ReadRepository, *args: Any, **kwargs: Any) -> Any:
        if _IN_READ.get():
            return await read(self, *args, **kwargs)
        token = _IN_READ.set(True)
        started = time.perf_counter()
        try:
            try:
                return await read(self, *args, **kwargs)
            except DBAPIError as error:
                if not (_dropped(error) and self._retries()):
                    raise
                READ_RETRIES.labels(query).inc()
                return await read(self, *args, **kwargs)
        except Exception as error:
            READ_ERRORS.labels(query, type(error).__name__).inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - started)
            _IN_READ.reset(token)

    measured._pipeline_read = True  # type: ignore[attr-defined]  # marks it wrapped
    return measured


def _streamed(read: Callable[..., Any], query: str) -> Callable[..., Any]:
    seconds = READ_SECONDS.labels(query)

    @functools.wraps(read)
    async def streamed(self: ReadRepository, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        yielded = False
        try:
            try:
                async for item in read(self, *args, **kwargs):
                    yielded = True
                    yield item
            except DBAPIError as error:
                if yielded or not (_dropped(error) and self._retries()):
                    raise
                READ_RETRIES.labels(query).inc()
                async for item in read(self, *args, **kwargs):
                    yield item
        except Exception as error:
            READ_ERRORS.labels(query, type(error).__name__).inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - started)

    streamed._pipeline_read = True  # type: ignore[attr-defined]  # marks it wrapped
    return streamed


async def fetch(conn: AsyncConnection, statement: Executable) -> list[RowMapping]:
    """Every row of ``statement`` run on ``conn``, as mappings."""
    return list((await conn.execute(statement)).mappings())


async def stream(
    conn: AsyncConnection, statement: Select[Any], batch_size: int
) -> AsyncIterator[RowMapping]:
    """The rows of ``statement`` on ``conn`` through a server-side cursor, ``batch_size`` at a
    time, so a read of any size holds one batch (``conn`` must be in a transaction, as the
    connections of :meth:`ReadRepository._snapshot` are)."""
    result = await conn.stream(statement.execution_options(yield_per=batch_size))
    async for partition in result.mappings().partitions():
        for row in partition:
            yield row


def check_limit(limit: int) -> None:
    """Refuse a page size below one, which could never make progress."""
    if limit < 1:
        raise ValueError("limit must be >= 1")


def check_aware(name: str, value: dt.datetime | None) -> None:
    """Refuse a naive datetime: every timestamp is timestamptz, and guessing a zone is a bug."""
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def page_of(
    items: Sequence[_Item], limit: int, cursor_of: Callable[[_Item], _Cursor]
) -> Page[_Item, _Cursor]:
    """A page of at most ``limit`` items from a query that asked for ``limit + 1``.

    The extra row only tells whether another page follows, so the last page carries no cursor
    (rather than a cursor to an empty page).
    """
    kept = tuple(items[:limit])
    more = len(items) > limit
    return Page(kept, cursor_of(kept[-1]) if more else None)
