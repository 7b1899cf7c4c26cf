"""The pipeline's exceptions, and the one place database errors are classified.

Every error a job can end with derives from :class:`PipelineError`. Driver errors are translated
here into three families: transient (retry the batch), reference (a row this write needs does
not exist yet: retry the job later) and data (this job's rows can never be written: isolate and
dead-letter it). A :class:`Conflict` is a data error the write path finds itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from typing import Any

from sqlalchemy import exc as sa_exc


class PipelineError(Exception):
    """Root of the pipeline's exceptions."""

    #: The id of the dead letter this failure was recorded as, once it is (None before).
    dead_letter_id: int | None = None


class InvalidPayload(PipelineError):
    """The job's arguments do not match its write kind's schema; it is dead-lettered unrun."""


class UnknownFunction(InvalidPayload):
    """A producer asked to enqueue a job of a function the worker does not have; nothing was
    queued."""

    @classmethod
    def named(cls, function: str, known: Collection[str]) -> UnknownFunction:
        """The error for ``function``, suggesting the closest of the ``known`` names."""
        close = difflib.get_close_matches(function, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        every = ", ".join(sorted(known))
        return cls(f"unknown function {function[:100]!r}{hint} (the worker has: {every})")


class StillQueued(PipelineError, TimeoutError):
    """A job did not commit within the time a producer waited for it. It is not lost: it stays
    queued (or is being retried) and commits or is dead-lettered later."""

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class UndeliverableJob(PipelineError):
    """The job cannot be handed to a function as sent (not msgpack, nested too deep, not an arq
    job, a function this worker does not have); it is dead-lettered with its raw bytes, unrun."""


class MissingReference(PipelineError):
    """A row this job refers to (a parent node, a node to score) does not exist yet."""

    #: Rows of the job that the same transaction applied (its other rows), for its receipt.
    applied: int = 0


class DataError(PipelineError):
    """PostgreSQL refused this job's rows (check, not-null, too long…); retrying cannot help."""


class Conflict(DataError):
    """This job defines an immutable record (a rubric version, an event…) differently from its
    first definition, stored or earlier in the batch; the first stands, this job is refused."""


class TransientError(PipelineError):
    """The database could not be reached or aborted the transaction; the batch may be retried.

    ``reachable`` is set when PostgreSQL answered a probe right after the failure (a deadlock, a
    serialization failure): such failures are given a bounded time, while an outage is waited out.
    """

    def __init__(self, message: str = "", *, reachable: bool = False) -> None:
        super().__init__(message)
        self.reachable = reachable


class NeverFinished(PipelineError):
    """The job was started ``max_tries`` times and never finished: each run was cut short (its
    worker killed or stopped, or the job timed out), so it is set aside instead of run again."""


class Cancelled(PipelineError):
    """An operator removed the job from the queue (``pipeline jobs cancel``); its dead letter
    keeps the payload, so it can still be replayed."""


class JobFailed(PipelineError):
    """A job failed in the worker; what a producer sees when it awaits the job's result.

    The worker sends failures as plain data (never pickled objects), and the producer's
    deserializer rebuilds them as this class, keeping the original class name in ``kind``.
    """

    def __init__(self, kind: str, message: str, dead_letter_id: int | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.dead_letter_id = dead_letter_id


# SQLSTATE classes (first two characters) and codes that mean "try again": connection, resources,
# operator intervention, transaction rollback, system error, snapshot too old, internal error.
_TRANSIENT_CLASSES = {"08", "53", "57", "40", "58", "72", "XX"}
# Syntax error or access rule violation (an unknown table or column), feature not supported.
_STATEMENT_CLASSES = {"42", "0A"}
# Lock not available, object in use, read-only transaction (a primary demoted by a failover).
_TRANSIENT_CODES = {"55P03", "55006", "25006"}
_FOREIGN_KEY_VIOLATION = "23503"


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a driver error wrapped by SQLAlchemy, if it has one."""
    orig: Any = getattr(error, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), error):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def classify(error: BaseException) -> PipelineError:
    """Translate an error raised while writing a batch into the pipeline's vocabulary."""
    if isinstance(error, PipelineError):
        return error
    code = sqlstate(error)
    message = _first_line(error)
    if code == _FOREIGN_KEY_VIOLATION:
        return MissingReference(message)
    if code is not None and (code[:2] in _TRANSIENT_CLASSES or code in _TRANSIENT_CODES):
        return TransientError(message)
    if code is not None and code[:2] in _STATEMENT_CLASSES:
        # The statement itself is refused, whatever the rows: the schema is behind the code
        # (migrations not run) or a bug. Retried while the retry clock allows, never bisected
        # into one dead letter per job.
        return TransientError(f"{message} (is the database migrated? `pipeline migrate`)")
    if code is not None and code[:2] in {"22", "23"}:
        return DataError(message)
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return TransientError(message)
    if isinstance(error, OSError | ConnectionError | TimeoutError | sa_exc.TimeoutError):
        return TransientError(message)
    if isinstance(error, sa_exc.InterfaceError | sa_exc.OperationalError):
        return TransientError(message)
    if isinstance(error, sa_exc.StatementError):
        return DataError(message)
    return TransientError(message)


def describe_error(error: BaseException) -> str:
    """``Class: first line of the message`` of an error, short enough for a log line or a probe."""
    return f"{type(error).__name__}: {_first_line(error)}"[:300]


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error) or type(error).__name__
    return text.strip().splitlines()[0][:500]
