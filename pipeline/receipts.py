"""A job's receipt: what became of its rows once their transaction committed.

The worker returns it as a :class:`JobResult`, a plain dict (arq stores it as the job's result,
msgpack; a producer in another language reads the same keys). A Python producer reads it as a
:class:`Receipt` (:meth:`Receipt.of`). One set of fields, asserted equal by the tests: a model
built per job would cost the worker a few microseconds a job for nothing it reads.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict


class JobResult(TypedDict):
    """What a write job returns once its rows are committed."""

    batch_id: str | None  # None when the job had nothing to write
    rows: int  # rows the job sent (items; one per rubric version)
    applied: int  # inserted or changed
    unchanged: int  # a stale version, a re-delivery, a record already written the same way
    jobs: int  # jobs committed in the same transaction
    committed_at: str | None  # ISO 8601, UTC


class Receipt(BaseModel):
    """What became of a job's rows, once its transaction committed.

    ``rows`` is what it sent, ``applied`` the rows inserted or changed, ``unchanged`` the rest;
    ``jobs`` the jobs that shared the transaction. A job with nothing to write has no batch.
    """

    model_config = ConfigDict(frozen=True)

    batch_id: str | None
    rows: int
    applied: int
    unchanged: int
    jobs: int
    committed_at: dt.datetime | None

    @classmethod
    def of(cls, result: Any) -> Receipt:
        """The receipt of a job's result (a :class:`JobResult`, as arq returns it)."""
        return cls.model_validate(result)
