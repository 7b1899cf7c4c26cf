"""Tables of the agent task runner: transcripts (full-text searchable) and events."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import CheckConstraint, Computed, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.schema.base import Base, created_at

TRANSCRIPT_ROLES = ("prompt", "response", "chunk", "combined")
TEXT_SEARCH_CONFIG = "english"


class Transcript(Base):
    """One entry of a task's transcript, in order within (task, phase, iteration)."""

    __tablename__ = "transcripts"

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    phase: Mapped[str] = mapped_column(String(100), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[dt.datetime]
    search: Mapped[str] = mapped_column(
        TSVECTOR, Computed(f"to_tsvector('{TEXT_SEARCH_CONFIG}', content)", persisted=True)
    )
    created_at: Mapped[dt.datetime] = created_at()

    __table_args__ = (
        CheckConstraint(
            "role IN (" + ", ".join(f"'{r}'" for r in TRANSCRIPT_ROLES) + ")", name="role_known"
        ),
        CheckConstraint("iteration >= 0 AND seq >= 0", name="order_non_negative"),
        Index("ix_transcripts_search", "search", postgresql_using="gin"),
        Index("ix_transcripts_timestamp", "timestamp", postgresql_using="brin"),
    )


class Event(Base):
    """Something that happened in a task (or in the system); append-only."""

    __tablename__ = "events"

    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    task_id: Mapped[str | None] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    occurred_at: Mapped[dt.datetime]
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = created_at()

    __table_args__ = (
        CheckConstraint("duration_ms >= 0", name="duration_non_negative"),
        Index("ix_events_task_time", "task_id", "occurred_at", "event_id"),
        Index("ix_events_type_time", "event_type", "occurred_at", "event_id"),
        # Keyset pages of all events walk this in order; a BRIN index cannot return rows sorted.
        Index("ix_events_time", "occurred_at", "event_id"),
    )
