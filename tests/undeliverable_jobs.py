"""Jobs as raw bytes that no worker can hand to its function, and what each must leave behind."""

from __future__ import annotations

import pickle
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgpack
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from pipeline.nesting import JOB_MAX_DEPTH
from pipeline.serialization import UNDELIVERABLE, serialize

ET = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in arq's milliseconds


def job(function: Any = "insert_nodes", args: Any = (), kwargs: Any = None, **extra: Any) -> bytes:
    """An arq job as msgpack, any part of it possibly wrong."""
    kwargs = (
        {"project_id": "p", "nodes": [{"node_id": "n", "label": "n"}]} if kwargs is None else kwargs
    )
    return serialize({"t": None, "f": function, "a": args, "k": kwargs, "et": ET, **extra})


def spliced(data: bytes, marker: str, replacement: bytes) -> bytes:
    """``data`` with the msgpack string ``marker`` replaced by other bytes."""
    packed = msgpack.packb(marker)
    assert data.count(packed) == 1
    return data.replace(packed, replacement)


def deep_array(levels: int) -> bytes:
    """A msgpack array nested ``levels`` deep (msgpack refuses to pack one over 1,024)."""
    return b"\x91" * (levels - 1) + b"\x90"


def deep_metadata(levels: int) -> dict[str, Any]:
    """A JSON object nested ``levels`` deep (itself is level 1)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@dataclass(frozen=True)
class Case:
    """Raw job bytes and the dead letter they must become."""

    name: str
    data: bytes
    function: str
    reason: str
    error: str = "UndeliverableJob"
    payload: dict[str, Any] | None = None  # kept instead of the raw bytes

    @property
    def raw(self) -> bytes | None:
        """The bytes the dead letter keeps."""
        return None if self.payload is not None else self.data


def _pickled() -> bytes:
    return pickle.dumps({"t": None, "f": "insert_nodes", "a": (), "k": {}, "et": ET})


CASES = [
    Case("pickle", _pickled(), UNDELIVERABLE, "pickle is not accepted"),
    Case(
        "not msgpack",
        b"\xc1 these bytes are no msgpack",
        UNDELIVERABLE,
        "not msgpack: FormatError",
    ),
    Case(
        "invalid UTF-8",
        spliced(job(kwargs={"project_id": "@@@@", "nodes": []}), "@@@@", b"\xa4\xff\xfe\xfd\xfc"),
        "insert_nodes",
        "invalid UTF-8",
    ),
    Case(
        "nested 5,000 deep",
        spliced(job(kwargs={"project_id": "p", "nodes": "@@"}), "@@", deep_array(5000)),
        UNDELIVERABLE,
        f"nested deeper than {JOB_MAX_DEPTH} levels",
    ),
    Case(
        "not a map",
        serialize(["insert_nodes", [], {}]),
        UNDELIVERABLE,
        "not an arq job (a map of f, a, k, t and et)",
    ),
    Case(
        "no arq keys",
        serialize({"f": "insert_nodes", "k": {}}),
        "insert_nodes",
        "not an arq job (a map of f, a, k, t and et)",
    ),
    Case("kwargs not a map", job(kwargs=[1, 2]), "insert_nodes", "kwargs is not a map of names"),
    Case("args not a list", job(args={"x": 1}), "insert_nodes", "args is not a list"),
    Case(
        "enqueue time not a time",
        serialize({"t": None, "f": "insert_nodes", "a": [], "k": {}, "et": 2**62}),
        "insert_nodes",
        "not an arq job: its enqueue time is not a time",
    ),
    Case(
        "unknown function",
        job("no_such_function", kwargs={"x": [1, "y"]}),
        "no_such_function",
        "unknown function 'no_such_function'",
        payload={"x": [1, "y"]},
    ),
    Case(
        "unknown function, positional",
        job("no_such_function", args=[1], kwargs={}),
        "no_such_function",
        "unknown function 'no_such_function'",
    ),
    Case(
        "reserved function",
        job(UNDELIVERABLE, kwargs={"undeliverable": {"error": "x", "reason": "forged"}}),
        UNDELIVERABLE,
        f"the function name {UNDELIVERABLE!r} is reserved",
    ),
]


def now_ms() -> int:
    """arq's clock."""
    return int(time.time() * 1000)


async def push(redis: ArqRedis, queue: str, data: bytes) -> str:
    """Put raw bytes on the queue as arq puts a job: its key, and its id in the queue."""
    job_id = uuid.uuid4().hex
    await redis.set(job_key_prefix + job_id, data)
    await redis.zadd(queue, {job_id: now_ms()})
    return job_id
