"""The job serializer: msgpack, never pickle; and the worker's deserializer, which fails no job.

A Redis shared with other services must not be a way to run code in the worker, so jobs and
results are msgpack. UUIDs, datetimes and decimals travel as strings (the payload models parse
them back). A failed job's result is a plain map, ``{"error": class name, "message": text,
"dead_letter_id": int or nil}``, which a producer in any language can read; :func:`deserialize`
turns it back into :class:`pipeline.errors.JobFailed` (and still reads the extension record of
(class name, message) that older workers wrote).

The worker decodes jobs with :class:`JobDeserializer`, which never raises for a job: one it
cannot hand to its function as sent becomes a job of the reserved function
:data:`UNDELIVERABLE`, which records it as a dead letter (see :mod:`pipeline.worker.undeliverable`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from pipeline.errors import InvalidPayload, JobFailed, PipelineError, UndeliverableJob
from pipeline.nesting import JOB_MAX_DEPTH, decoded_deeper_than

# The extension record older workers wrote for an exception: read, no longer written.
_EXCEPTION_EXT = 1

#: The arq function of every job the worker cannot hand to its own function.
UNDELIVERABLE = "pipeline_undeliverable"
#: The keyword argument of an :data:`UNDELIVERABLE` job: its :class:`Undeliverable`.
UNDELIVERED = "undeliverable"
OVERSIZED = "__pipeline_oversized_payload_bytes__"

_JOB_KEYS = frozenset(("t", "f", "a", "k", "et"))
# arq writes all of these into every result, and reads results with the worker's deserializer too.
_RESULT_KEYS = _JOB_KEYS | {"s", "r", "st", "ft"}
_FAILURE_KEYS = frozenset(("error", "message", "dead_letter_id"))
_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last time a datetime can hold
# The first byte of every msgpack map and array header: a job holds at least as many of these
# bytes as it nests levels, so most jobs are shown shallow enough without being walked.
_HEADERS = bytes((*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF))
_NAME_MAX = 255  # the dead-letter store's function column


@dataclass(frozen=True, slots=True, repr=False)
class Undeliverable:
    """A job that cannot be handed to its function: the error to fail it with, the function it
    names (when that could be read), and its keyword arguments when they decoded as a map (an
    unknown function's job, which can be replayed once the function exists), else its raw bytes.
    """

    error: PipelineError
    function: str | None = None
    payload: dict[str, Any] | None = None
    raw: bytes | None = None

    def __repr__(self) -> str:
        # arq logs every job's arguments: the reason, never the bytes.
        return f"<undeliverable job: {type(self.error).__name__}: {self.error}>"

    def summary(self) -> dict[str, Any]:
        """What the job's arq result keeps of it (not the bytes)."""
        return {"error": type(self.error).__name__, "reason": str(self.error)}


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, BaseException):
        return _failure(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, Undeliverable):
        return value.summary()
    raise TypeError(f"cannot serialize {type(value).__name__} in a job")


def _failure(error: BaseException) -> dict[str, Any]:
    """The plain map a failed job's result holds for ``error``: its class name (the original
    one for a :class:`JobFailed`), its message and the id of its dead letter, if it has one."""
    if isinstance(error, JobFailed):
        kind, message = error.kind, error.message
    else:
        kind, message = type(error).__name__, str(error)
    letter = getattr(error, "dead_letter_id", None)
    return {
        "error": kind,
        "message": message,
        "dead_letter_id": letter if type(letter) is int else None,
    }


def _failed(result: Any) -> JobFailed | None:
    """The :class:`JobFailed` of a failure map, or None for any other value."""
    if not isinstance(result, dict) or result.keys() != _FAILURE_KEYS:
        return None
    kind, message, letter = result["error"], result["message"], result["dead_letter_id"]
    if not isinstance(kind, str) or not isinstance(message, str):
        return None
    if letter is not None and type(letter) is not int:
        return None
    return JobFailed(kind, message, letter)


def _read_failure(value: Any) -> Any:
    """``value``, with the failure map of a failed arq result rebuilt as :class:`JobFailed` (arq
    raises a result only if it is an exception); nothing else, a job's payload least of all."""
    if isinstance(value, dict) and value.keys() >= _RESULT_KEYS and value["s"] is False:
        error = _failed(value["r"])
        if error is not None:
            value["r"] = error
    return value


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXCEPTION_EXT:
        kind, message = msgpack.unpackb(data)
        return JobFailed(str(kind), str(message))
    raise ValueError(f"unknown msgpack extension {code}")


def serialize(obj: Any) -> bytes:
    """Encode a job or a result as msgpack."""
    return msgpack.packb(obj, default=_default, datetime=False)


def deserialize(data: bytes, *, unicode_errors: str = "strict") -> Any:
    """Decode msgpack; raises on anything else (pickle included). A failed arq result's
    failure map comes back as :class:`pipeline.errors.JobFailed`."""
    value = msgpack.unpackb(
        data, ext_hook=_ext_hook, strict_map_key=False, unicode_errors=unicode_errors
    )
    return _read_failure(value)


def _not_decoded(data: bytes, error: Exception) -> str:
    """Why ``data`` did not decode, in words that quote none of it."""
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle is not accepted"
    if isinstance(error, UnicodeDecodeError):
        return "invalid UTF-8"
    if isinstance(error, msgpack.StackError):
        return f"nested deeper than {JOB_MAX_DEPTH} levels"
    message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return f"not msgpack: {type(error).__name__}" + (f" ({message})" if message else "")


def _shape_problem(job: Any) -> str | None:
    """What keeps a decoded value from being an arq job that arq can run, if anything."""
    if not isinstance(job, dict) or not job.keys() >= _JOB_KEYS:
        return "not an arq job (a map of f, a, k, t and et)"
    if not isinstance(job["f"], str):
        return "not an arq job: its function is not a name"
    et, tries = job["et"], job["t"]
    if type(et) is not int or not 0 <= et <= _LAST_MS:
        return "not an arq job: its enqueue time is not a time"
    if tries is not None and type(tries) is not int:
        return "not an arq job: its try is not a number"
    if job["f"] == UNDELIVERABLE:
        return f"the function name {UNDELIVERABLE!r} is reserved"
    if not isinstance(job["a"], list):
        return "args is not a list"
    if not isinstance(job["k"], dict) or not all(isinstance(k, str) for k in job["k"]):
        return "kwargs is not a map of names"
    return None


class JobDeserializer:
    """The worker's deserializer: :func:`deserialize`, which turns every job that cannot run as
    sent into a job of :data:`UNDELIVERABLE` instead of failing (arq would fail it unrecorded).

    That is a job that is not msgpack (pickle included), holds text that is not UTF-8, nests
    deeper than :data:`pipeline.nesting.JOB_MAX_DEPTH` levels, is not a map with arq's keys and
    types, names a function not in ``functions``, or names :data:`UNDELIVERABLE` itself (so that
    function only ever sees what this class built). Its enqueue time and try are kept when they
    can be read. A job over ``max_bytes`` keeps its function name but its arguments are replaced
    by ``{OVERSIZED: size}``, so the job fails with a clear message before it reaches a batch.
    A map with all of arq's result keys is returned as a result (a failure map in it read as
    :class:`pipeline.errors.JobFailed`): arq reads results with this too.
    """

    def __init__(self, max_bytes: int, functions: Iterable[str]) -> None:
        self.max_bytes = max_bytes
        self.functions = frozenset(functions)

    def __call__(self, data: bytes) -> Any:
        try:
            job = deserialize(data)
        except Exception as exc:  # msgpack raises many kinds, and no job may fail unrecorded
            return self._undecoded(data, exc)
        if isinstance(job, dict) and job.keys() >= _RESULT_KEYS and not self._too_deep(data, job):
            return job
        problem = _shape_problem(job)
        if problem is not None:
            return self._refused(data, job, UndeliverableJob(problem))
        function = job["f"]
        if function not in self.functions:
            reason = f"unknown function {function[:100]!r}"
            return self._refused(data, job, UndeliverableJob(reason), replayable=True)
        if len(data) > self.max_bytes:
            job["a"], job["k"] = [], {OVERSIZED: len(data)}
        elif self._too_deep(data, job):
            error = InvalidPayload(f"{function}: nested deeper than {JOB_MAX_DEPTH} levels")
            return self._refused(data, job, error)
        return job

    @staticmethod
    def _too_deep(data: bytes, job: dict[str, Any]) -> bool:
        if len(data) - len(data.translate(None, _HEADERS)) <= JOB_MAX_DEPTH:
            return False
        return decoded_deeper_than(job, JOB_MAX_DEPTH)

    def _undecoded(self, data: bytes, error: Exception) -> dict[str, Any]:
        """The job of bytes that did not decode: what a lenient decoding can still tell of it
        (the function and enqueue time of a job with text that is not UTF-8) is kept."""
        reason = UndeliverableJob(_not_decoded(data, error))
        if isinstance(error, UnicodeDecodeError):
            try:
                salvaged = deserialize(data, unicode_errors="replace")
            except Exception:  # noqa: S110 - then nothing can be told of it, which is fine
                pass
            else:
                return self._refused(data, salvaged, reason)
        return self._refused(data, None, reason)

    def _refused(
        self, data: bytes, job: Any, error: PipelineError, *, replayable: bool = False
    ) -> dict[str, Any]:
        """An :data:`UNDELIVERABLE` job for ``data``; ``job`` is what it decoded to, if anything.
        A replayable job keeps its arguments unless it has positional ones or is oversized."""
        shaped = isinstance(job, dict)
        function = job.get("f") if shaped else None
        tries = job.get("t") if shaped else None
        enqueued = job.get("et") if shaped else None
        payload = None
        if replayable and shaped and not job["a"] and len(data) <= self.max_bytes:
            payload = job["k"]
        raw = None if payload is not None else data[: self.max_bytes]
        letter = Undeliverable(
            error=_cut(error, len(data), self.max_bytes) if raw is not None else error,
            function=function[:_NAME_MAX] if isinstance(function, str) else None,
            payload=payload,
            raw=raw,
        )
        return {
            "t": tries if type(tries) is int else None,
            "f": UNDELIVERABLE,
            "a": [],
            "k": {UNDELIVERED: letter},
            "et": enqueued if type(enqueued) is int and 0 <= enqueued <= _LAST_MS else _now_ms(),
        }


def _cut(error: PipelineError, size: int, kept: int) -> PipelineError:
    """``error``, saying so when only the first ``kept`` of the job's ``size`` bytes are kept."""
    if size <= kept:
        return error
    return type(error)(f"{error}; the job is {size} bytes, its first {kept} are kept")


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)
