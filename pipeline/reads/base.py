"""What every read repository shares: where its statements run, and keyset pages.

A repository reads through an engine (each read checks out a connection of its own, so it can
point at a replica) or through a session (reads run in the session's transaction and see its
uncommitted writes). Repositories never commit and never write, except where one says so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import Executable, RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from pipeline.reads.models import Page

Source = AsyncEngine | AsyncSession

_Item = TypeVar("_Item")
_Cursor = TypeVar("_Cursor")


class ReadRepository:
    """Base of the read repositories: holds the source and runs statements on it."""

    def __init__(self, source: Source) -> None:
        self._source = source

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


async def fetch(conn: AsyncConnection, statement: Executable) -> list[RowMapping]:
    """Every row of ``statement`` run on ``conn``, as mappings."""
    return list((await conn.execute(statement)).mappings())


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
