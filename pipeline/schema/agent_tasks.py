"""Tables of the agent task runner: transcripts (full-text searchable) and events.

A ``tsvector`` holds at most 1,048,575 bytes of lexemes and positions; ``to_tsvector`` refuses
a longer one ("string is too long for tsvector"), which a transcript entry of a few hundred
kilobytes of distinct words already needs. So an entry's ``search`` column indexes what fits:
an entry of up to :data:`SEARCH_PIECE_CHARS` bytes whole (always within the limit), a longer one
piece by piece from its start, in pieces of that many characters ending at white space, while
the pieces fit together. ``content`` always keeps the whole text.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Computed, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.schema.base import Base, created_at

TRANSCRIPT_ROLES = ("prompt", "response", "chunk", "combined")
TEXT_SEARCH_CONFIG = "english"

# A character is at most four bytes of UTF-8, and the parser puts it in at most two lexemes (a
# hyphenated word and its part, a URL and its host or path): this many characters stay within
# the tsvector limit even at twice that, 16 bytes of lexemes and positions per character.
SEARCH_PIECE_CHARS = 65_000
TSVECTOR_MAX_BYTES = 1_048_575
SEARCH_FUNCTION = "transcript_search_vector"

# Migration 0005 creates this function; a test compares the database's copy with this text.
# pg_column_size - 4 * length is a tsvector's lexemes and positions plus its 8-byte header: the
# sum of two such sizes is never below the size of their concatenation, which `||` refuses
# above the limit.
SEARCH_FUNCTION_SQL = f"""
CREATE FUNCTION {SEARCH_FUNCTION}(content text) RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    total constant integer := char_length(content);
    start integer := 1;
    result tsvector := ''::tsvector;
    piece_text text;
    piece tsvector;
BEGIN
    WHILE start <= total LOOP
        piece_text := substr(content, start, {SEARCH_PIECE_CHARS});
        IF start + {SEARCH_PIECE_CHARS} <= total THEN
            piece_text := coalesce(substring(piece_text from '^.*\\s'), piece_text);
        END IF;
        piece := to_tsvector('{TEXT_SEARCH_CONFIG}', piece_text);
        EXIT WHEN pg_column_size(result) - 4 * length(result)
            + pg_column_size(piece) - 4 * length(piece) > {TSVECTOR_MAX_BYTES};
        result := result || piece;
        start := start + char_length(piece_text);
    END LOOP;
    RETURN result;
END
$$"""

# Entries that surely fit (most) take the plain expression, without a function call per row.
SEARCH_EXPRESSION = (
    f"CASE WHEN octet_length(content) <= {SEARCH_PIECE_CHARS} "
    f"THEN to_tsvector('{TEXT_SEARCH_CONFIG}', content) ELSE {SEARCH_FUNCTION}(content) END"
)


class Transcript(Base):
    """One entry of a task's transcript, in order within (task, phase, iteration)."""

    __tablename__ = "transcripts"

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    phase: Mapped[str] = mapped_column(String(100), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[dt.datetime]
    search: Mapped[str] = mapped_column(TSVECTOR, Computed(SEARCH_EXPRESSION, persisted=True))
    created_at: Mapped[dt.datetime] = created_at()

    __table_args__ = (
        CheckConstraint(
            "role IN (" + ", ".join(f"'{r}'" for r in TRANSCRIPT_ROLES) + ")", name="role_known"
        ),
        CheckConstraint("iteration >= 0", name="iteration_non_negative"),
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
