"""Producer-side coalescing: many concurrent single-item writes become a few multi-item jobs.

arq's cost is per job (a few Redis round trips and some Python in the worker), so a producer that
writes one score at a time pays it per score. :class:`CoalescingClient` buffers the items of
calls that share a write kind and its other arguments (``project_id``…) and enqueues them as one
job once ``max_items`` are waiting or ``linger_s`` has passed since the first, or at once when
a call is ``urgent``. A job never exceeds the worker's item and byte limits: a buffer that would
is sent first. Each item is validated on its own, so a bad item fails its caller only. A call
returns once its job is enqueued, or, with ``wait=True``, once its job has committed. The jobs of
one kind and shared arguments are enqueued in the order their items were written.

Use it as an async context manager (or call :meth:`CoalescingClient.aclose`): leaving the block
sends everything still buffered and waits until it is enqueued, and until every ``wait=True``
call has its receipt, so a producer that shuts down loses nothing it handed over.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from arq.jobs import Job
from pydantic import TypeAdapter, ValidationError

from pipeline.errors import InvalidPayload, UnknownFunction
from pipeline.kinds import BY_NAME
from pipeline.kinds.base import describe
from pipeline.producer.client import PipelineClient, receipt_of
from pipeline.receipts import Receipt
from pipeline.serialization import serialize
from pipeline.settings import Settings

Key = tuple[str, tuple[tuple[str, Any], ...]]


def items_field(function: str) -> str:
    """The name of the keyword argument that carries a kind's list of items."""
    kind = BY_NAME.get(function)
    if kind is None:
        raise UnknownFunction.named(function, BY_NAME)
    if kind.items is None:
        raise InvalidPayload(f"{function} does not take a list of items to coalesce")
    return kind.items


@functools.cache
def _item_adapter(function: str) -> TypeAdapter[Any]:
    """Validates one item of a kind's list, without the payload around it."""
    items_field(function)  # refuses a kind without items
    return TypeAdapter(BY_NAME[function].item_type)


# What a job's header may add to the buffer's estimate: an array header growing to 5 bytes, the
# urgent flag.
_HEADER_SLACK = 32
_SOME_MS = 2**40  # an enqueue time as wide as any real one (a 64-bit msgpack integer)


def _overhead(key: Key) -> int:
    """The serialized size of the key's job with no items (and the slack of its header)."""
    function, shared = key
    kwargs = {**dict(shared), items_field(function): []}
    job: dict[str, Any] = {"t": None, "f": function, "a": [], "k": kwargs, "et": _SOME_MS}
    return len(serialize(job)) + _HEADER_SLACK


@dataclass
class _Buffer:
    size: int  # serialized bytes of the job so far (an estimate that errs large)
    items: list[Any] = field(default_factory=list)
    waiters: list[asyncio.Future[Job]] = field(default_factory=list)
    urgent: bool = False
    timer: asyncio.TimerHandle | None = None


class CoalescingClient:
    """Buffers single-item writes per (kind, shared arguments) and enqueues them together.

    ``CoalescingClient(client)`` uses a connected :class:`PipelineClient`, which it leaves open;
    ``async with CoalescingClient()`` makes its own (from ``settings``) and closes it when the
    block ends.
    """

    def __init__(
        self,
        client: PipelineClient | None = None,
        *,
        max_items: int = 500,
        linger_s: float = 0.005,
        settings: Settings | None = None,
    ) -> None:
        self.client = client or PipelineClient(settings=settings)
        self._owns_client = client is None
        self.max_items = min(max_items, self.client.limits.items)
        self.linger_s = linger_s
        self._buffers: dict[Key, _Buffer] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._tails: dict[Key, asyncio.Task[None]] = {}  # the last send of each key
        # (kind, shared arguments) already validated, with the size of their job without items
        self._overheads: dict[Key, int] = {}
        self._committing = 0  # wait=True calls waiting for their receipt
        self._settled = asyncio.Event()
        self._closed = False
        self.jobs_enqueued = 0

    async def __aenter__(self) -> CoalescingClient:
        if self._owns_client:
            await self.client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def write(
        self,
        function: str,
        item: dict[str, Any],
        *,
        wait: bool = False,
        urgent: bool = False,
        timeout: float | None = None,
        **shared: Any,
    ) -> Receipt | None:
        """Add one item; returns when its job is enqueued (or committed, with ``wait``, for up
        to ``timeout`` seconds: see :meth:`PipelineClient.write`). ``urgent`` sends it at once,
        with the items buffered before it, in one job (which the worker writes ahead of
        everything it holds, for a kind that takes ``urgent``: ``record_events``)."""
        if self._closed:
            raise RuntimeError("CoalescingClient is closed")
        key, overhead = self._validate(function, item, shared)
        size = self._size(function, item)
        limit = self.client.limits.bytes
        if overhead + size > limit:
            self.client.limits.check_bytes(function, overhead + size)
        buffer = self._buffers.get(key)
        if buffer is not None and buffer.size + size > limit:
            self._send(key)  # full: what came before goes first, in its own job
            buffer = None
        if buffer is None:
            buffer = self._buffers[key] = _Buffer(size=overhead)
        waiter: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        buffer.items.append(item)  # as given: the serializer and the worker take it as it is
        buffer.waiters.append(waiter)
        buffer.size += size
        buffer.urgent |= urgent
        if urgent or len(buffer.items) >= self.max_items:
            self._send(key)
        elif buffer.timer is None:
            buffer.timer = asyncio.get_running_loop().call_later(self.linger_s, self._send, key)
        job = await waiter
        if not wait:
            return None
        self._committing += 1
        self._settled.clear()
        try:
            return await receipt_of(job, function, self.client.wait_s(timeout))
        finally:
            self._committing -= 1
            if not self._committing:
                self._settled.set()

    def _validate(
        self, function: str, item: dict[str, Any], shared: dict[str, Any]
    ) -> tuple[Key, int]:
        """Check ``item`` (and, the first time, the shared arguments); the buffer's key and the
        serialized size of its job without items."""
        name = items_field(function)
        key: Key = (function, tuple(sorted(shared.items())))
        try:
            overhead = self._overheads.get(key)
        except TypeError:  # an unhashable shared argument: normalise it through the model
            overhead = None
            payload = BY_NAME[function].parse({**shared, name: [item]})
            dumped = payload.model_dump(mode="json", exclude_unset=True)
            key = (function, tuple(sorted((k, v) for k, v in dumped.items() if k != name)))
        if overhead is not None:
            # The shared arguments passed once already: only the new item needs checking.
            try:
                _item_adapter(function).validate_python(item)
            except ValidationError as exc:
                raise InvalidPayload(f"{function}: {describe(exc, at=(name, 0))}") from None
            return key, overhead
        BY_NAME[function].parse({**shared, name: [item]})
        if len(self._overheads) >= 10_000:
            self._overheads.clear()
        overhead = self._overheads[key] = _overhead(key)
        return key, overhead

    @staticmethod
    def _size(function: str, item: dict[str, Any]) -> int:
        try:
            return len(serialize(item))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidPayload(f"{function}: an item cannot be serialized: {exc}") from None

    def _send(self, key: Key) -> None:
        buffer = self._buffers.pop(key, None)
        if buffer is None:
            return
        if buffer.timer is not None:
            buffer.timer.cancel()
        task = asyncio.create_task(self._enqueue(key, buffer, self._tails.get(key)))
        self._tails[key] = task
        self._sending.add(task)
        task.add_done_callback(functools.partial(self._sent, key))

    def _sent(self, key: Key, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]

    async def _enqueue(self, key: Key, buffer: _Buffer, before: asyncio.Task[None] | None) -> None:
        function, shared = key
        if before is not None:  # the key's earlier items are enqueued first (they are older)
            await asyncio.wait([before])
        try:
            kwargs: dict[str, Any] = {**dict(shared), items_field(function): buffer.items}
            if buffer.urgent and "urgent" in BY_NAME[function].payload.model_fields:
                kwargs["urgent"] = True  # the worker writes it first, too
            job: Job | None = await self.client.redis.enqueue_job(function, **kwargs)
            if job is None:
                raise InvalidPayload(f"{function}: job was not enqueued")
        except Exception as exc:  # every caller of the batch learns why
            for waiter in buffer.waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            raise
        self.jobs_enqueued += 1
        for waiter in buffer.waiters:
            if not waiter.done():
                waiter.set_result(job)

    async def flush(self) -> None:
        """Enqueue everything buffered now, and wait until it is enqueued; raises the first
        error of a job that could not be (its callers were told too)."""
        for key in list(self._buffers):
            self._send(key)
        results = await asyncio.gather(*self._sending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def aclose(self) -> None:
        """Send everything buffered, wait until it is enqueued and until every ``wait=True``
        call has its receipt; then close the client if this one made it. Writes after this
        raise."""
        self._closed = True
        try:
            await self.flush()
            while self._committing:
                await self._settled.wait()
        finally:
            if self._owns_client:
                await self.client.aclose()
