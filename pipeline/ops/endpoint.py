"""The worker's HTTP endpoint: ``/metrics`` for Prometheus, ``/ready`` for orchestrators, ``/``
for people (:mod:`pipeline.ops.web`).

It runs on the worker's own event loop (``asyncio.start_server``), so ``/ready`` can await the
same checks as ``pipeline ready`` and a scrape can read the queue depth from Redis; answering at
all also shows the worker's loop is not stuck. HTTP is kept to what probes and Prometheus need:
one ``GET`` (or ``HEAD``) per connection, answered and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.ops import metrics, web
from pipeline.ops.pause import Pause, paused
from pipeline.ops.queue_metrics import QUEUE_REGISTRY, QueueSampler
from pipeline.ops.readiness import readiness
from pipeline.reads.metrics import READ_METRICS
from pipeline.settings import Settings
from pipeline.worker.gate import DatabaseGate

log = structlog.get_logger("pipeline.endpoint")

#: What a worker's ``/metrics`` serves: its own metrics, the queue's side, the read side's.
WORKER_REGISTRIES = (metrics.REGISTRY, QUEUE_REGISTRY, READ_METRICS)

# The text format prometheus_client's generate_latest writes (every Prometheus version reads it).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_TIMEOUT_S = 5.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class Endpoint:
    """Serves ``/metrics`` and ``/ready`` for one worker until :meth:`close`."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis | None,
        gate: DatabaseGate | None = None,
        *,
        sampler: QueueSampler | None = None,
        registries: Sequence[CollectorRegistry] = WORKER_REGISTRIES,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.gate = gate
        #: Reads the queue's side before each scrape (set once Redis is connected).
        self.sampler = sampler
        self.registries = registries
        #: A worker's endpoint opened before it connected to Redis, until :meth:`attach`.
        self.starting = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0: any free port, then found in :attr:`port`)."""
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    def attach(
        self, redis: Redis | None, gate: DatabaseGate | None, engine: AsyncEngine | None
    ) -> None:
        """Hand an endpoint opened before its worker connected (:func:`start_before_connecting`)
        the worker's queue, database gate and engine, once start-up has made them."""
        self.redis, self.gate = redis, gate
        self.sampler = sampler(self.settings, redis, engine)
        self.starting = False

    async def close(self) -> None:
        """Stop listening and end the connections still open (a probe waiting on a check)."""
        if self._server is None:
            return
        self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            status, content_type, body = await self._answer(reader)
            head = (
                f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or never sent a request: nothing to answer
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        except (asyncio.LimitOverrunError, UnicodeDecodeError, ValueError):
            return 400, "text/plain", b"bad request\n"
        path = target.split("?", 1)[0]
        routes = {"/metrics": self._metrics, "/ready": self._ready, "/": self._page}
        if path not in routes:
            return 404, "text/plain", b"not found: try /, /metrics or /ready\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET or HEAD\n"
        answer = routes[path]()
        status, content_type, body = await answer
        return status, content_type, b"" if method == "HEAD" else body

    async def _metrics(self) -> tuple[int, str, bytes]:
        if self.sampler is not None:
            await self.sampler.sample()
        body = b"".join(generate_latest(registry) for registry in self.registries)
        return 200, METRICS_CONTENT_TYPE, body

    async def _page(self) -> tuple[int, str, bytes]:
        engine = self.sampler.engine if self.sampler is not None else None
        page = await web.render(self.settings.queue_name, self.redis, engine)
        return 200, "text/html; charset=utf-8", page.encode()

    async def _ready(self) -> tuple[int, str, bytes]:
        checks = await readiness(self.settings)
        lines = [
            f"{c.service} {c.target}: {'ok' if c.error is None else f'unreachable ({c.error})'}"
            for c in checks
        ]
        ready = all(c.error is None for c in checks) and not self.starting
        if self.starting:
            lines.append("worker: starting (connecting to Redis), taking no jobs yet")
        if self.gate is not None and not self.gate.is_open:
            ready = False
            lines.append(
                f"worker: holding its writes and taking no jobs since {self.gate.closed_since}, "
                f"PostgreSQL unreachable ({self.gate.reason})"
            )
        held = await self._paused()
        if held is not None:
            ready = False
            lines.append(
                f"worker: taking no jobs, the queue is paused since {held.since.isoformat()} by "
                f"{held.by}{f' ({held.reason})' if held.reason else ''}: pipeline resume"
            )
        if not ready:
            log.warning("not ready", **{c.service: c.error for c in checks if c.error})
        body = ("\n".join(lines) + "\n").encode()
        return 200 if ready else 503, "text/plain; charset=utf-8", body

    async def _paused(self) -> Pause | None:
        """The queue's pause, for a worker (the exporter consumes nothing: a pause is no
        reason for it not to be ready); None if Redis does not say, which its check reports."""
        if self.gate is None or self.redis is None:
            return None
        try:
            async with asyncio.timeout(1.0):
                return await paused(self.redis, self.settings.queue_name)
        except Exception:  # Redis unreachable: its own check says so
            return None


async def start(
    settings: Settings,
    redis: Redis | None,
    gate: DatabaseGate | None = None,
    engine: AsyncEngine | None = None,
) -> Endpoint | None:
    """Start the endpoint if ``metrics_port`` is set (``PIPELINE_METRICS_PORT``), else None;
    with ``redis``, each scrape reads the queue's side too (dead letters through ``engine``)."""
    if settings.metrics_port is None:
        return None
    endpoint = Endpoint(settings, redis, gate, sampler=sampler(settings, redis, engine))
    await endpoint.start(settings.metrics_host, settings.metrics_port)
    return endpoint


async def start_before_connecting(settings: Settings) -> Endpoint | None:
    """Start a worker's endpoint before it connects to Redis (if ``metrics_port`` is set), so
    that ``/ready`` answers from the worker's first second: 503 while it starts, naming what it
    cannot reach. :meth:`Endpoint.attach` completes it once the worker has started up."""
    if settings.metrics_port is None:
        return None
    endpoint = Endpoint(settings, None)
    endpoint.starting = True
    await endpoint.start(settings.metrics_host, settings.metrics_port)
    return endpoint


def sampler(
    settings: Settings, redis: Redis | None, engine: AsyncEngine | None
) -> QueueSampler | None:
    """The queue-side sampler of these settings, if there is a Redis to read."""
    if redis is None:
        return None
    return QueueSampler(redis, engine, settings.queue_name, scan_limit=settings.queue_scan_limit)
