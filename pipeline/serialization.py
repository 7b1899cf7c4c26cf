"""The job serializer: msgpack, never pickle.

A Redis shared with other services must not be a way to run code in the worker, so jobs and
results are msgpack. UUIDs, datetimes and decimals travel as strings (the payload models parse
them back); an exception in a result travels as an extension record of (class name, message)
and comes back as :class:`pipeline.errors.JobFailed`. Anything else, pickled bytes included,
fails to deserialize and arq fails that job without running it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import msgpack

from pipeline.errors import JobFailed

_EXCEPTION_EXT = 1


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, BaseException):
        kind = value.kind if isinstance(value, JobFailed) else type(value).__name__
        message = value.message if isinstance(value, JobFailed) else str(value)
        return msgpack.ExtType(_EXCEPTION_EXT, msgpack.packb([kind, message]))
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot serialize {type(value).__name__} in a job")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXCEPTION_EXT:
        kind, message = msgpack.unpackb(data)
        return JobFailed(str(kind), str(message))
    raise ValueError(f"unknown msgpack extension {code}")


def serialize(obj: Any) -> bytes:
    """Encode a job or a result as msgpack."""
    return msgpack.packb(obj, default=_default, datetime=False)


def deserialize(data: bytes) -> Any:
    """Decode msgpack; raises on anything else (pickle included)."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, strict_map_key=False)


OVERSIZED = "__pipeline_oversized_payload_bytes__"


class JobDeserializer:
    """The worker's deserializer: :func:`deserialize` with a cap on a job's size.

    A job over ``max_bytes`` keeps its function name but its arguments are replaced by
    ``{OVERSIZED: size}``, so the job runs, fails with a clear message and is dead-lettered
    instead of reaching a batch (or failing inside arq with no record).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def __call__(self, data: bytes) -> Any:
        decoded = deserialize(data)
        if len(data) > self.max_bytes and isinstance(decoded, dict) and "k" in decoded:
            decoded["a"], decoded["k"] = (), {OVERSIZED: len(data)}
        return decoded
