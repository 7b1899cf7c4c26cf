"""Alembic: upgrade head builds the schema the models describe; downgrade base removes it all;
the transcripts' search column is rebuilt over the rows a database holds, both ways; their seq
widens to bigint over the rows there, and narrows back only when every seq fits."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.schema import metadata
from pipeline.schema.agent_tasks import SEARCH_FUNCTION, SEARCH_FUNCTION_SQL
from tests.conftest import migrate
from tests.integration.helpers import scalar

TAXONOMY = {
    "projects",
    "rubrics",
    "rubric_principles",
    "nodes",
    "principle_scores",
    "labeled_samples",
    "branch_stats",
    "dead_letters",
}
VERIFICATION_AND_TASKS = {
    "claims",
    "verification_results",
    "consensus_decisions",
    "training_data",
    "model_checkpoints",
    "service_health",
    "transcripts",
    "events",
    "audit_log",
}
TABLES = TAXONOMY | VERIFICATION_AND_TASKS


def _differences(connection: Connection) -> list[object]:
    # Server defaults too: a generated column whose expression differs warns (an error here).
    context = MigrationContext.configure(connection, opts={"compare_server_default": True})
    return list(compare_metadata(context, metadata))


async def test_upgrade_matches_the_models_and_downgrade_removes_everything(
    engine: AsyncEngine, database_url: str
) -> None:
    async with engine.connect() as conn:
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert tables >= TABLES
        assert await conn.run_sync(_differences) == []
        indexes = {
            r[0]
            for r in await conn.execute(
                text("SELECT indexdef FROM pg_indexes WHERE tablename = 'nodes'")
            )
        }
        assert any("WHERE ((status)::text = 'alive'::text)" in i for i in indexes)
    await engine.dispose()

    await asyncio.to_thread(migrate, database_url, "0001", down=True)
    async with engine.connect() as conn:
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert tables == TAXONOMY | {"alembic_version"}

    await asyncio.to_thread(migrate, database_url, "base", down=True)
    async with engine.connect() as conn:
        assert set(await conn.run_sync(lambda c: inspect(c).get_table_names())) == {
            "alembic_version"
        }

    await asyncio.to_thread(migrate, database_url, "head")
    async with engine.connect() as conn:
        assert set(await conn.run_sync(lambda c: inspect(c).get_table_names())) >= TABLES


def _function_body(definition: str) -> str:
    return definition.split("$$")[1]


async def test_the_search_function_is_the_one_the_schema_defines(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT prosrc, provolatile::text, proisstrict, proparallel::text FROM pg_proc "
                    "WHERE proname = :name"
                ),
                {"name": SEARCH_FUNCTION},
            )
        ).one()
    assert tuple(row) == (_function_body(SEARCH_FUNCTION_SQL), "i", True, "s")


async def _add_entries(engine: AsyncEngine, entries: dict[int, str]) -> None:
    async with engine.begin() as conn:
        for seq, content in entries.items():
            await conn.execute(
                text(
                    "INSERT INTO transcripts (task_id, phase, iteration, seq, role, content, "
                    "timestamp) VALUES ('t', 'p', 0, :seq, 'chunk', :content, now())"
                ),
                {"seq": seq, "content": content},
            )


async def _found(engine: AsyncEngine, word: str) -> list[int]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT seq FROM transcripts WHERE search @@ websearch_to_tsquery('english', :q) "
                "ORDER BY seq"
            ),
            {"q": word},
        )
        return list(result.scalars())


async def test_the_search_column_is_rebuilt_over_existing_rows_and_back(
    engine: AsyncEngine, database_url: str
) -> None:
    await asyncio.to_thread(migrate, database_url, "0004", down=True)
    await _add_entries(engine, {0: "The migration runs", 1: "Deploy the workers"})
    # 0004 cannot hold the long entries 0005 takes.
    distinct = " ".join(f"x{n:06d}" for n in range(125_000))
    with pytest.raises(DBAPIError, match="too long for tsvector"):
        await _add_entries(engine, {2: distinct})
    await engine.dispose()

    await asyncio.to_thread(migrate, database_url, "0005")
    assert await _found(engine, "migrating") == [0]  # vectors recomputed for the rows there
    assert await _found(engine, "worker") == [1]
    await _add_entries(engine, {2: distinct})
    assert await _found(engine, "x000007") == [2]
    await engine.dispose()

    with pytest.raises(DBAPIError, match="too long for the search column of revision 0004"):
        await asyncio.to_thread(migrate, database_url, "0004", down=True)
    assert await scalar(engine, "SELECT version_num FROM alembic_version") == "0005"
    assert await _found(engine, "x000007") == [2]  # the failed downgrade changed nothing

    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM transcripts WHERE seq = 2"))
    await engine.dispose()
    await asyncio.to_thread(migrate, database_url, "0004", down=True)
    assert await _found(engine, "migrating") == [0]
    assert (
        await scalar(engine, "SELECT count(*) FROM pg_proc WHERE proname = :n", n=SEARCH_FUNCTION)
        == 0
    )
    await engine.dispose()
    await asyncio.to_thread(migrate, database_url, "head")
    assert await _found(engine, "worker") == [1]


async def _seq_type_and_values(engine: AsyncEngine) -> tuple[str, list[int]]:
    """The type of the transcripts' seq column, and every seq stored, in order."""
    async with engine.connect() as conn:
        kind = await conn.scalar(
            text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'transcripts' AND column_name = 'seq'"
            )
        )
        seqs = list(
            (await conn.execute(text("SELECT seq FROM transcripts ORDER BY seq"))).scalars()
        )
    return kind, seqs


async def _checks(engine: AsyncEngine) -> set[str]:
    """The names of the transcripts' checks on their order (iteration, seq)."""
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'transcripts'::regclass "
                "AND contype = 'c' AND conname <> 'ck_transcripts_role_known'"
            )
        )
        return set(result.scalars())


async def test_seq_widens_over_existing_rows_and_narrows_back_only_when_every_seq_fits(
    engine: AsyncEngine, database_url: str
) -> None:
    await asyncio.to_thread(migrate, database_url, "0006", down=True)
    await _add_entries(engine, {0: "first", 2**31 - 1: "last"})
    with pytest.raises(DBAPIError, match="ck_transcripts_order_non_negative"):
        await _add_entries(engine, {-1: "derived"})  # 0006 holds no seq of the derived range
    await engine.dispose()

    await asyncio.to_thread(migrate, database_url, "0007")
    assert await _seq_type_and_values(engine) == ("bigint", [0, 2**31 - 1])
    assert await _found(engine, "first") == [0]  # the rows keep their content and search vector
    await _add_entries(engine, {-(2**63): "derived", -1: "derived too", 2**31: "wide"})
    with pytest.raises(DBAPIError, match="ck_transcripts_iteration_non_negative"):
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO transcripts (task_id, phase, iteration, seq, role, content, "
                    "timestamp) VALUES ('t', 'p', -1, 5, 'chunk', 'x', now())"
                )
            )
    await engine.dispose()

    # Derived seqs are below 0006's check, and 2**31 beyond its column: each alone refuses.
    refused = "cannot downgrade: some transcripts have a seq that revision 0006 cannot hold"
    misfits = [
        ("DELETE FROM transcripts WHERE seq < 0", [2**31]),
        ("DELETE FROM transcripts WHERE seq > 2147483647", []),
    ]
    for delete, left in misfits:
        before = await _seq_type_and_values(engine)
        with pytest.raises(DBAPIError, match=refused):
            await asyncio.to_thread(migrate, database_url, "0006", down=True)
        assert await scalar(engine, "SELECT version_num FROM alembic_version") == "0007"
        assert await _seq_type_and_values(engine) == before  # the refusal changed nothing
        assert await _checks(engine) == {"ck_transcripts_iteration_non_negative"}
        async with engine.begin() as conn:
            await conn.execute(text(delete))
        assert (await _seq_type_and_values(engine))[1] == sorted([0, 2**31 - 1, *left])
        await engine.dispose()

    await asyncio.to_thread(migrate, database_url, "0006", down=True)
    assert await _seq_type_and_values(engine) == ("integer", [0, 2**31 - 1])
    assert await _checks(engine) == {"ck_transcripts_order_non_negative"}
    with pytest.raises(DBAPIError, match="ck_transcripts_order_non_negative"):
        await _add_entries(engine, {-1: "derived"})  # the old check is back
    await engine.dispose()
    await asyncio.to_thread(migrate, database_url, "head")
    assert await _seq_type_and_values(engine) == ("bigint", [0, 2**31 - 1])
