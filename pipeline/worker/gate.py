"""The database gate: whether this worker can reach PostgreSQL, and waiting until it can.

A worker that finds PostgreSQL unreachable closes the gate: the coalescer stops flushing and keeps
the rows it holds, the worker stops claiming jobs, and readiness fails with the reason.
While closed, a probe runs ``SELECT 1`` every ``database_probe_interval_s``; its first success opens
the gate again and everything resumes by itself. Nothing in the gate counts tries or spends time
budgets: an outage of any length costs a job only the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.errors import describe_error
from pipeline.ops import metrics

log = structlog.get_logger("pipeline.gate")

_PING = text("SELECT 1")


class DatabaseGate:
    """Open while PostgreSQL answers; closed, with a probe running, while it does not."""

    def __init__(
        self, engine: AsyncEngine, *, probe_interval_s: float, probe_timeout_s: float
    ) -> None:
        self._engine = engine
        self._interval_s = probe_interval_s
        self._timeout_s = probe_timeout_s
        self._open = asyncio.Event()
        self._open.set()
        self._probe: asyncio.Task[None] | None = None
        self._check: asyncio.Task[bool] | None = None
        self._listeners: list[Callable[[bool], None]] = []
        self._closed_at = 0.0
        #: Why the gate is closed (value-free), and since when; None while open.
        self.reason: str | None = None
        self.closed_since: dt.datetime | None = None
        metrics.DATABASE_REACHABLE.set(1)

    @property
    def is_open(self) -> bool:
        """Whether the last contact with PostgreSQL succeeded."""
        return self._open.is_set()

    async def wait_open(self, timeout_s: float | None = None) -> bool:
        """Wait until the gate is open (at most ``timeout_s``); whether it is."""
        if self._open.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._open.wait()
        return self._open.is_set()

    async def check(self) -> bool:
        """Ask PostgreSQL now (after a failure): close the gate if it does not answer."""
        if not self._open.is_set():
            return False
        error = await self._ping()
        if error is not None:
            self.close(error)
        return error is None

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(is_open)`` each time the gate closes or opens."""
        self._listeners.append(listener)

    def suspect(self) -> None:
        """Something failed that may mean PostgreSQL is gone: check in the background (once at a
        time), for callers that cannot wait for the answer."""
        if self._open.is_set() and (self._check is None or self._check.done()):
            self._check = asyncio.create_task(self.check(), name="pipeline-database-check")

    def close(self, reason: str) -> None:
        """Record that PostgreSQL is unreachable and start probing for its return."""
        if not self._open.is_set():
            return
        self._open.clear()
        self.reason = reason
        self.closed_since = dt.datetime.now(dt.UTC)
        self._closed_at = time.monotonic()
        metrics.DATABASE_REACHABLE.set(0)
        log.warning("database unreachable; holding writes until it answers", reason=reason)
        self._probe = asyncio.create_task(self._run_probe(), name="pipeline-database-probe")
        for listener in self._listeners:
            listener(False)

    async def stop(self) -> None:
        """Stop probing (worker shutdown)."""
        for task in (self._probe, self._check):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._probe = self._check = None

    async def _run_probe(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            error = await self._ping()
            if error is None:
                break
            self.reason = error
        log.info(
            "database reachable again; resuming",
            down_s=round(time.monotonic() - self._closed_at, 1),
        )
        self.reason = self.closed_since = None
        self._probe = None
        metrics.DATABASE_REACHABLE.set(1)
        self._open.set()
        for listener in self._listeners:
            listener(True)

    async def _ping(self) -> str | None:
        """None if PostgreSQL answered ``SELECT 1`` in time, else why not."""
        try:
            async with asyncio.timeout(self._timeout_s), self._engine.connect() as conn:
                await conn.execute(_PING)
        except Exception as exc:  # any failure means unreachable; the reason is for operators
            return describe_error(exc)
        return None
