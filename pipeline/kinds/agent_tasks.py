"""The agent task runner: ``append_transcripts`` and ``record_events``, both append-only.

Transcript entries are insert-if-absent by (task, phase, iteration, seq); events by ``event_id``.
Both are immutable: the same entry again is a no-op, a different one under its key a conflict.
An entry sent without ``seq`` gets one derived from its content (:func:`derived_seq`), a
negative number, so it never meets a producer's seq (0 or more): the same entry sent again, in
a re-delivered job or a new one, has the same identity. An empty job writes nothing.
``record_events(..., urgent=True)`` puts the job ahead of everything the coalescer holds, for the
events (a phase completing) that must not wait behind a backlog.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Literal

from pydantic import BaseModel, Field

from pipeline.kinds.base import Row, Target, WriteKind
from pipeline.kinds.fields import (
    STRICT,
    Bool,
    Int32,
    JsonObject,
    Key,
    MediumKey,
    Text,
    Timestamp,
    to_json,
)


class TranscriptItem(BaseModel):
    """One transcript entry. Without a seq, its seq is derived from its content (a negative
    number): the same entry sent again is the same entry, and two identical entries are one."""

    model_config = STRICT
    task_id: Key
    phase: MediumKey
    iteration: Int32
    seq: Int32 | None = None
    role: Literal["prompt", "response", "chunk", "combined"]
    content: Text
    timestamp: Timestamp


class AppendTranscripts(BaseModel):
    """Keyword arguments of ``append_transcripts``; an empty list writes nothing."""

    model_config = STRICT
    transcripts: list[TranscriptItem]


TRANSCRIPTS = Target(
    name="transcripts",
    table="transcripts",
    columns=(
        ("task_id", "text"),
        ("phase", "text"),
        ("iteration", "int4"),
        ("seq", "int8"),
        ("role", "text"),
        ("content", "text"),
        ("timestamp", "timestamptz"),
    ),
    key=("task_id", "phase", "iteration", "seq"),
    reports=True,
    immutable=True,
    # The keys not inserted are looked for only when the insert returned fewer rows than it was
    # sent (a one-time filter): the common case reads no more than the inserted keys.
    sql="""
        WITH inserted AS (
            INSERT INTO transcripts (task_id, phase, iteration, seq, role, content, timestamp)
            SELECT * FROM {rows}
            ON CONFLICT (task_id, phase, iteration, seq) DO NOTHING
            RETURNING task_id, phase, iteration, seq
        )
        SELECT 'present', * FROM (
            SELECT * FROM {keys} EXCEPT SELECT * FROM inserted
        ) d WHERE (SELECT count(*) FROM inserted) < {size}
    """,
)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def derived_seq(item: TranscriptItem) -> int:
    """The seq of an entry sent without one: from -2**63 to -1, a function of its content.

    A blake2b digest of 8 bytes over task_id, phase, iteration, role, content and timestamp (as
    integer microseconds since 1970-01-01 UTC, so one instant written with any offset is one
    timestamp), each field UTF-8 (numbers in decimal) after its byte length as 8 bytes big-endian;
    the digest read as an unsigned big-endian integer ``n`` gives ``-1 - (n >> 1)``.
    """
    # A difference of aware datetimes, unlike astimezone, cannot overflow at year 1 or 9999.
    micros = (item.timestamp - _EPOCH) // _MICROSECOND
    digest = hashlib.blake2b(digest_size=8)
    for field in (item.task_id, item.phase, str(item.iteration), item.role, item.content):
        _update(digest, field.encode())
    _update(digest, str(micros).encode())
    return -1 - (int.from_bytes(digest.digest(), "big") >> 1)


def _update(digest: hashlib.blake2b, data: bytes) -> None:
    # The length first: ("ab", "c") and ("a", "bc") must not hash alike.
    digest.update(len(data).to_bytes(8, "big"))
    digest.update(data)


def _transcript_rows(p: AppendTranscripts, version: int) -> list[Row]:
    return [
        (
            t.task_id,
            t.phase,
            t.iteration,
            derived_seq(t) if t.seq is None else t.seq,
            t.role,
            t.content,
            t.timestamp,
        )
        for t in p.transcripts
    ]


append_transcripts = WriteKind(
    "append_transcripts", AppendTranscripts, TRANSCRIPTS, _transcript_rows, items="transcripts"
)


class EventItem(BaseModel):
    """One event."""

    model_config = STRICT
    event_id: uuid.UUID
    task_id: Key | None = None
    event_type: MediumKey
    payload: JsonObject = Field(default_factory=dict)
    occurred_at: Timestamp
    duration_ms: Int32 | None = None


class RecordEvents(BaseModel):
    """Keyword arguments of ``record_events``; an empty list writes nothing."""

    model_config = STRICT
    events: list[EventItem]
    urgent: Bool = False


EVENTS = Target(
    name="events",
    table="events",
    columns=(
        ("event_id", "uuid"),
        ("task_id", "text"),
        ("event_type", "text"),
        ("payload", "text"),
        ("occurred_at", "timestamptz"),
        ("duration_ms", "int4"),
    ),
    key=("event_id",),
    reports=True,
    immutable=True,
    json_columns=("payload",),
    sql="""
        WITH inserted AS (
            INSERT INTO events (event_id, task_id, event_type, payload, occurred_at, duration_ms)
            SELECT event_id, task_id, event_type, CAST(payload AS jsonb), occurred_at, duration_ms
            FROM {rows}
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
        )
        SELECT 'present', * FROM (
            SELECT * FROM {keys} EXCEPT SELECT * FROM inserted
        ) d WHERE (SELECT count(*) FROM inserted) < {size}
    """,
)


def _event_rows(p: RecordEvents, version: int) -> list[Row]:
    return [
        (e.event_id, e.task_id, e.event_type, to_json(e.payload), e.occurred_at, e.duration_ms)
        for e in p.events
    ]


record_events = WriteKind("record_events", RecordEvents, EVENTS, _event_rows, items="events")
