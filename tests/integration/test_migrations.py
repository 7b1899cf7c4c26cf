"""Alembic: upgrade head builds the schema the models describe; downgrade base removes it all."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.schema import metadata
from tests.conftest import migrate

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
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


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
