"""Producer-side coalescing: many concurrent single-item writes become a few multi-item jobs.

arq's cost is per job (a few Redis round trips and some Python in the worker), so a producer that
writes one score at a time pays it per score. :class:`CoalescingClient` buffers the items of
calls that share a write kind and its other arguments (``project_id``…) and enqueues them as one
job once ``max_items`` are waiting or ``linger_s`` has passed since the first. Each item is
validated on its own, so a bad item fails its caller only. A call returns once its job is
enqueued, or, with ``wait=True``, once its job has committed.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from arq.jobs import Job
from pydantic import TypeAdapter, ValidationError

from pipeline.client import PipelineClient, Receipt
from pipeline.errors import InvalidPayload
from pipeline.kinds import BY_NAME
from pipeline.kinds.base import describe

Key = tuple[str, tuple[tuple[str, Any], ...]]


@functools.cache
def items_field(function: str) -> str:
    """The name of the keyword argument that carries a kind's list of items."""
    kind = BY_NAME.get(function)
    if kind is None:
        raise InvalidPayload(f"unknown write kind {function!r}")
    lists: list[str] = [
        n for n, f in kind.payload.model_fields.items() if get_origin(f.annotation) is list
    ]
    if len(lists) != 1:
        raise InvalidPayload(f"{function} does not take a list of items to coalesce")
    return lists[0]


@functools.cache
def _item_adapter(function: str) -> TypeAdapter[Any]:
    """Validates one item of a kind's list, without the payload around it."""
    annotation = BY_NAME[function].payload.model_fields[items_field(function)].annotation
    (item,) = get_args(annotation)
    return TypeAdapter(item)


@dataclass
class _Buffer:
    items: list[Any] = field(default_factory=list)
    waiters: list[asyncio.Future[Job]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class CoalescingClient:
    """Buffers single-item writes per (kind, shared arguments) and enqueues them together."""

    def __init__(
        self, client: PipelineClient, *, max_items: int = 500, linger_s: float = 0.005
    ) -> None:
        self.client = client
        self.max_items = max_items
        self.linger_s = linger_s
        self._buffers: dict[Key, _Buffer] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._checked: set[Key] = set()  # (kind, shared arguments) already validated
        self.jobs_enqueued = 0

    async def write(
        self, function: str, item: dict[str, Any], *, wait: bool = False, **shared: Any
    ) -> Receipt | None:
        """Add one item; returns when its job is enqueued (or committed, with ``wait``)."""
        name = items_field(function)
        key: Key = (function, tuple(sorted(shared.items())))
        try:
            known = key in self._checked
        except TypeError:  # an unhashable shared argument: normalise it through the model
            known = False
            payload = BY_NAME[function].parse({**shared, name: [item]})
            dumped = payload.model_dump(mode="json", exclude_unset=True)
            key = (function, tuple(sorted((k, v) for k, v in dumped.items() if k != name)))
        if known:
            # The shared arguments passed once already: only the new item needs checking.
            try:
                _item_adapter(function).validate_python(item)
            except ValidationError as exc:
                raise InvalidPayload(f"{function}: {describe(exc, at=(name, 0))}") from None
        else:
            BY_NAME[function].parse({**shared, name: [item]})
            if len(self._checked) >= 10_000:
                self._checked.clear()
            self._checked.add(key)
        buffer = self._buffers.setdefault(key, _Buffer())
        waiter: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        buffer.items.append(item)  # as given: the serializer and the worker take it as it is
        buffer.waiters.append(waiter)
        if len(buffer.items) >= self.max_items:
            self._send(key)
        elif buffer.timer is None:
            buffer.timer = asyncio.get_running_loop().call_later(self.linger_s, self._send, key)
        job = await waiter
        if not wait:
            return None
        return Receipt.model_validate(await job.result(poll_delay=0.01))

    def _send(self, key: Key) -> None:
        buffer = self._buffers.pop(key, None)
        if buffer is None:
            return
        if buffer.timer is not None:
            buffer.timer.cancel()
        task = asyncio.create_task(self._enqueue(key, buffer))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _enqueue(self, key: Key, buffer: _Buffer) -> None:
        function, shared = key
        try:
            kwargs: dict[str, Any] = {**dict(shared), items_field(function): buffer.items}
            job = await self.client.redis.enqueue_job(function, **kwargs)
            if job is None:
                raise InvalidPayload(f"{function}: job was not enqueued")
        except Exception as exc:  # every caller of the batch learns why
            for waiter in buffer.waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        self.jobs_enqueued += 1
        for waiter in buffer.waiters:
            if not waiter.done():
                waiter.set_result(job)

    async def flush(self) -> None:
        """Enqueue everything buffered now, and wait until it is enqueued."""
        for key in list(self._buffers):
            self._send(key)
        await asyncio.gather(*self._sending, return_exceptions=True)
