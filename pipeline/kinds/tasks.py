"""The agent task runner: ``append_transcripts`` and ``record_events``, both append-only.

Transcript entries are insert-if-absent by (task, phase, iteration, seq); events by ``event_id``.
Both are immutable: the same entry again is a no-op, a different one under its key a conflict.
``record_events(..., urgent=True)`` puts the job ahead of everything the coalescer holds, for the
events (a phase completing) that must not wait behind a backlog.
"""

from __future__ import annotations

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
    """One transcript entry."""

    model_config = STRICT
    task_id: Key
    phase: MediumKey
    iteration: Int32
    seq: Int32
    role: Literal["prompt", "response", "chunk", "combined"]
    content: Text
    timestamp: Timestamp


class AppendTranscripts(BaseModel):
    """Keyword arguments of ``append_transcripts``."""

    model_config = STRICT
    transcripts: list[TranscriptItem] = Field(min_length=1)


TRANSCRIPTS = Target(
    name="transcripts",
    table="transcripts",
    order=100,
    columns=(
        ("task_id", "text"),
        ("phase", "text"),
        ("iteration", "int4"),
        ("seq", "int4"),
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


def _transcript_rows(p: AppendTranscripts, version: int) -> list[Row]:
    return [
        (t.task_id, t.phase, t.iteration, t.seq, t.role, t.content, t.timestamp)
        for t in p.transcripts
    ]


append_transcripts = WriteKind(
    "append_transcripts", AppendTranscripts, TRANSCRIPTS, _transcript_rows
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
    """Keyword arguments of ``record_events``."""

    model_config = STRICT
    events: list[EventItem] = Field(min_length=1)
    urgent: Bool = False


EVENTS = Target(
    name="events",
    table="events",
    order=100,
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


record_events = WriteKind("record_events", RecordEvents, EVENTS, _event_rows)
