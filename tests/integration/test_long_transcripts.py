"""Transcripts as long as a job may be: stored whole, and searchable as far as a tsvector holds.

PostgreSQL refuses a tsvector past 1,048,575 bytes of lexemes and positions; a transcript entry
of ~1 MB of distinct words needs about half as much again, and the worst text for the parser
(hyphenated words of four-byte letters, every part distinct) close to eight times its
characters.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import serialize_job
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.reads import TaskReads
from pipeline.schema.agent_tasks import SEARCH_PIECE_CHARS
from pipeline.serialization import serialize
from pipeline.settings import Settings
from tests.integration.helpers import scalar

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
# Letters of CJK Extension B: four bytes of UTF-8 each, and tens of thousands of them.
FOUR_BYTE_LETTERS = [chr(c) for c in range(0x20000, 0x2A6D0)]


def distinct_words(count: int) -> list[str]:
    """``count`` different words of seven characters (letters and digits: none is a stop word)."""
    return [f"x{n:06d}" for n in range(count)]


def hyphenated_pairs(count: int) -> list[str]:
    """``count`` words like 𠀀𠀁𠀂-𠀃𠀄𠀅, their parts (almost) never repeating: each letter lands
    in two lexemes, the word and its part."""
    letters = FOUR_BYTE_LETTERS * (6 * count // len(FOUR_BYTE_LETTERS) + 1)
    random.Random(5).shuffle(letters)
    return [
        "".join(letters[i : i + 3]) + "-" + "".join(letters[i + 3 : i + 6])
        for i in range(0, 6 * count, 6)
    ]


def entry(content: str, seq: int = 0) -> dict[str, Any]:
    return {
        "task_id": "TASK-LONG",
        "phase": "act",
        "iteration": 0,
        "seq": seq,
        "role": "response",
        "content": content,
        "timestamp": T0.isoformat(),
    }


def job_size(content: str) -> int:
    """The size of the serialized ``append_transcripts`` job carrying ``content``."""
    kwargs = {"transcripts": [entry(content)]}
    return len(serialize_job("append_transcripts", (), kwargs, None, 0, serializer=serialize))


async def search(engine: AsyncEngine, query: str) -> list[int]:
    """The seq of every entry the search read finds for ``query``."""
    return [hit.entry.seq for hit in await TaskReads(engine).search_transcripts(query)]


async def test_a_megabyte_of_distinct_words_stores_whole_and_its_leading_part_is_searchable(
    producer: ArqRedis, drain: Callable[[], Any], engine: AsyncEngine, settings: Settings
) -> None:
    words = distinct_words(125_000)
    content = " ".join(words)
    assert len(content) == 999_999 and job_size(content) <= settings.job_max_bytes
    with pytest.raises(DBAPIError, match="too long for tsvector"):
        await scalar(engine, "SELECT to_tsvector('english', :c)", c=content)

    job = await producer.enqueue_job("append_transcripts", transcripts=[entry(content)])
    worker = await drain()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert (await job.result(timeout=5))["rows"] == 1
    assert await scalar(engine, "SELECT count(*) FROM dead_letters") == 0
    assert await scalar(engine, "SELECT content FROM transcripts") == content

    # Pieces of 65,000 characters (8,125 of these words) join while they fit: ten of them, the
    # first 81,250 words; the eleventh would pass the limit.
    assert await search(engine, words[0]) == [0]
    assert await search(engine, words[60_000]) == [0]
    assert await search(engine, words[81_249]) == [0]
    assert await search(engine, words[81_250]) == []
    assert await search(engine, words[-1]) == []
    assert await scalar(engine, "SELECT length(search) FROM transcripts") == 81_250


async def test_the_worst_text_for_the_parser_stores_at_the_job_cap(
    producer: ArqRedis, drain: Callable[[], Any], engine: AsyncEngine, settings: Settings
) -> None:
    words = hyphenated_pairs(40_000)
    content = " ".join(words)
    assert settings.job_max_bytes - 20_000 < job_size(content) <= settings.job_max_bytes
    # Its first piece alone is close to eight bytes of tsvector per character.
    first_piece = await scalar(
        engine,
        "SELECT pg_column_size(v) - 4 * length(v) FROM to_tsvector('english', left(:c, :n)) v",
        c=content,
        n=SEARCH_PIECE_CHARS,
    )
    assert first_piece > 7.5 * SEARCH_PIECE_CHARS

    await producer.enqueue_job("append_transcripts", transcripts=[entry(content)])
    worker = await drain()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert await scalar(engine, "SELECT content = :c FROM transcripts", c=content)
    assert await search(engine, words[0]) == [0]
    assert await search(engine, words[0].split("-")[1]) == [0]  # a part is a lexeme too
    # Two pieces of 8,125 of these words fit; a third would pass the limit. (Parts, not whole
    # words: a hyphenated query is a phrase, and this far in, every position is 16,383.)
    assert await search(engine, words[16_249].split("-")[1]) == [0]
    assert await search(engine, words[16_250].split("-")[0]) == []
    assert await search(engine, words[-1].split("-")[0]) == []


async def test_prose_up_to_the_cap_is_searchable_to_its_end(engine: AsyncEngine) -> None:
    # A vocabulary of 20,000 words, used over and over as prose does.
    rng = random.Random(7)
    vocabulary = distinct_words(20_000)
    words = [rng.choice(vocabulary) for _ in range(130_000)] + ["lastword"]
    content = " ".join(words)
    assert len(content) > 1_000_000
    await insert(engine, [(0, content)])
    assert await search(engine, "lastword") == [0]
    assert await scalar(engine, "SELECT length(search) FROM transcripts") == len(set(words))


async def test_a_word_across_a_piece_boundary_is_kept_whole(engine: AsyncEngine) -> None:
    head = ("filler " * 10_000)[: SEARCH_PIECE_CHARS - 5]
    content = head + " boundary" + " words after it" * 3_000
    assert content.index("boundary") == SEARCH_PIECE_CHARS - 4  # "boun" ends the first piece
    await insert(engine, [(0, content), (1, "a short boundary")])
    assert sorted(await search(engine, "boundary")) == [0, 1]
    assert await search(engine, "boun") == []  # not cut into "boun" and "dary"
    assert await search(engine, "dary") == []
    assert await search(engine, "filler") == [0]


async def test_long_entries_are_served_by_the_gin_index(engine: AsyncEngine) -> None:
    filler = " ".join(distinct_words(20_000))
    await insert(engine, [(i, f"{filler} entry{i}") for i in range(20)])
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE transcripts"))
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            row[0]
            for row in await conn.execute(
                text(
                    "EXPLAIN SELECT seq FROM transcripts "
                    "WHERE search @@ websearch_to_tsquery('english', 'entry7')"
                )
            )
        )
    assert "Bitmap Index Scan on ix_transcripts_search" in plan
    assert await search(engine, "entry7") == [7]


async def insert(engine: AsyncEngine, rows: list[tuple[int, str]]) -> None:
    """Insert transcript entries of TASK-LONG with these (seq, content)."""
    async with engine.begin() as conn:
        for seq, content in rows:
            await conn.execute(
                text(
                    "INSERT INTO transcripts (task_id, phase, iteration, seq, role, content, "
                    "timestamp) VALUES ('TASK-LONG', 'act', 0, :seq, 'chunk', :content, now())"
                ),
                {"seq": seq, "content": content},
            )
