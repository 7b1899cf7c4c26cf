"""The task-runner read repository: transcripts (with full-text search) and events.

Every read issues one statement (none for a blank search query).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import fields

from sqlalchemy import (
    ColumnElement,
    Text,
    any_,
    bindparam,
    case,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, REGCONFIG

from pipeline.reads.base import ReadRepository, check_aware, check_limit, page_of
from pipeline.reads.models import (
    EventCursor,
    EventRecord,
    Page,
    TranscriptEntry,
    TranscriptHit,
    from_row,
)
from pipeline.schema import metadata
from pipeline.schema.agent_tasks import TEXT_SEARCH_CONFIG

TRANSCRIPTS = metadata.tables["transcripts"]
EVENTS = metadata.tables["events"]

# Every column but the tsvector, which is an index's business, not the reader's.
_ENTRY_COLUMNS = [TRANSCRIPTS.c[f.name] for f in fields(TranscriptEntry)]

# The configuration must be the one the ``search`` column is generated with, or stemming would
# differ between the query and the documents. It is a constant of the schema, never user input,
# so it is inlined; the user's text is always a bound parameter.
_CONFIG = literal_column(f"'{TEXT_SEARCH_CONFIG}'", REGCONFIG)
# A producer's seq (0 or more) orders its entries; a seq derived from an entry's content
# (negative) orders nothing: those entries come after the others (NULLS LAST), by timestamp.
_POSITION = case((TRANSCRIPTS.c.seq >= 0, TRANSCRIPTS.c.seq))


class TaskReads(ReadRepository):
    """Reads of one database's transcripts and events.

    ``source`` is an engine (each read checks out a connection of its own; point it at a replica
    if you like) or a session (reads run in the session's transaction and see its uncommitted
    writes). Nothing here writes or commits.
    """

    query_prefix = "tasks"

    async def transcripts(self, task_id: str, phase: str | None = None) -> list[TranscriptEntry]:
        """The task's transcript, or one phase of it.

        Within a phase, entries come by iteration, and within an iteration in the producer's
        order, seq, whatever their timestamps say (clocks of concurrent producers disagree; seq
        does not); then the entries sent without a seq (whose derived seq orders nothing) by
        timestamp, ties by seq. Without a phase, the entries of each phase stay together in that
        order, and phases come in the order they started: by their earliest timestamp, ties by
        phase name. The primary key's index finds the task's (or phase's) entries, which are
        then sorted.
        """
        statement = select(*_ENTRY_COLUMNS).where(TRANSCRIPTS.c.task_id == task_id)
        if phase is not None:
            statement = statement.where(TRANSCRIPTS.c.phase == phase)
        else:
            started = func.min(TRANSCRIPTS.c.timestamp).over(partition_by=TRANSCRIPTS.c.phase)
            statement = statement.order_by(started, TRANSCRIPTS.c.phase)
        statement = statement.order_by(
            TRANSCRIPTS.c.iteration, _POSITION, TRANSCRIPTS.c.timestamp, TRANSCRIPTS.c.seq
        )
        return [from_row(TranscriptEntry, row) for row in await self._rows(statement)]

    async def search_transcripts(
        self, query: str, *, task_id: str | None = None, limit: int = 20
    ) -> list[TranscriptHit]:
        """The ``limit`` transcript entries that best match ``query``, best first.

        ``query`` is web-search syntax (``websearch_to_tsquery``: words, "quoted phrases",
        ``or``, ``-word``), stemmed with the same English configuration as the entries, so
        "running" finds "runs". The match is served by the GIN index ix_transcripts_search. The
        rank is ``ts_rank_cd`` (cover density: more and closer occurrences rank higher), ties
        broken by (task_id, phase, iteration, seq). A blank query returns [] without querying;
        a query of stop words only matches nothing (after one statement).
        """
        check_limit(limit)
        if not query.strip():
            return []
        tsquery = func.websearch_to_tsquery(_CONFIG, bindparam("query", query, type_=Text()))
        rank = func.ts_rank_cd(TRANSCRIPTS.c.search, tsquery)
        statement = (
            select(*_ENTRY_COLUMNS, rank.label("rank"))
            .where(TRANSCRIPTS.c.search.bool_op("@@")(tsquery))
            .order_by(
                rank.desc(),
                TRANSCRIPTS.c.task_id,
                TRANSCRIPTS.c.phase,
                TRANSCRIPTS.c.iteration,
                TRANSCRIPTS.c.seq,
            )
            .limit(limit)
        )
        if task_id is not None:
            statement = statement.where(TRANSCRIPTS.c.task_id == task_id)
        return [
            TranscriptHit(from_row(TranscriptEntry, row), row["rank"])
            for row in await self._rows(statement)
        ]

    async def events(
        self,
        *,
        task_id: str | None = None,
        event_type: str | Sequence[str] | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 100,
        after: EventCursor | None = None,
    ) -> Page[EventRecord, EventCursor]:
        """One page of events, oldest first (ties by event_id), matching every filter given.

        ``event_type`` is one type or several (any of them matches; an empty sequence is a
        ValueError, since it could match nothing).

        ``since`` and ``until`` bound ``occurred_at`` half-open, [since, until), and must be
        timezone-aware. Pass a page's ``next_cursor`` as ``after`` for the next page, with the
        same filters. Keyset pagination on (occurred_at, event_id), served by
        ix_events_task_time or ix_events_type_time when a task or type is given: a page costs
        the same however deep it is.
        """
        check_limit(limit)
        check_aware("since", since)
        check_aware("until", until)
        statement = (
            select(EVENTS)
            .where(*_event_filters(task_id, event_type, since, until, after))
            .order_by(EVENTS.c.occurred_at, EVENTS.c.event_id)
            .limit(limit + 1)
        )
        items = [from_row(EventRecord, row) for row in await self._rows(statement)]
        return page_of(items, limit, lambda last: last.cursor)


def _event_filters(
    task_id: str | None,
    event_type: str | Sequence[str] | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    after: EventCursor | None,
) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if task_id is not None:
        filters.append(EVENTS.c.task_id == task_id)
    if isinstance(event_type, str):
        filters.append(EVENTS.c.event_type == event_type)
    elif event_type is not None:
        types = sorted(set(event_type))
        if not types:
            raise ValueError("event_type: give at least one type, or None for every type")
        # One array parameter, so the statement is the same for any number of types.
        filters.append(EVENTS.c.event_type == any_(bindparam("types", types, type_=ARRAY(Text()))))
    if since is not None:
        filters.append(EVENTS.c.occurred_at >= since)
    if until is not None:
        filters.append(EVENTS.c.occurred_at < until)
    if after is not None:
        cursor = tuple_(EVENTS.c.occurred_at, EVENTS.c.event_id)
        filters.append(cursor > (after.occurred_at, after.event_id))
    return filters
