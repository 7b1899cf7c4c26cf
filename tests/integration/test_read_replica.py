"""``PIPELINE_READ_DATABASE_URL``: the read repository reads from the replica it names, while the
write path keeps the primary."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.postgres import create_engine
from pipeline.reads import TaxonomyReads
from pipeline.settings import Settings

# Nothing listens here: a read that went to the primary would fail.
UNREACHABLE_PRIMARY = "postgresql+asyncpg://postgres@127.0.0.1:1/pipeline"


async def test_reads_go_to_the_replica_and_writes_to_the_primary(
    engine: AsyncEngine, database_url: str
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO projects (project_id, name) VALUES ('r', 'r')"))
        await conn.execute(
            text("INSERT INTO nodes (project_id, node_id, label) VALUES ('r', 'root', 'the root')")
        )
    settings = Settings(database_url=UNREACHABLE_PRIMARY, read_database_url=database_url)
    replica = create_engine(settings, read=True)
    primary = create_engine(settings)
    try:
        node = await TaxonomyReads(replica).node("r", "root")
        assert node is not None and node.label == "the root"
        assert primary.url.port == 1 and replica.url.database == engine.url.database
    finally:
        await replica.dispose()
        await primary.dispose()


def test_without_a_replica_reads_use_the_primary(database_url: str) -> None:
    settings = Settings(database_url=database_url)
    assert create_engine(settings, read=True).url == create_engine(settings).url
