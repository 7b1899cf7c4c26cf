"""The database audits every change of the audited tables and keeps ``updated_at``, whoever
writes: the pipeline (with its jobs' actors) or a plain SQL session (a migration, a manual fix).

The "outside" writer here is the test's own engine: no ``application_name`` of the pipeline's,
none of its connection settings.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.kinds.nodes import NODE_UPDATES
from pipeline.postgres import create_engine
from pipeline.schema import metadata
from pipeline.schema.audit import AUDITED, TOUCHED
from pipeline.settings import Settings
from tests.conftest import migrate
from tests.integration.helpers import rows, scalar

# One valid row per table that keeps an updated_at, as a manual INSERT would write it.
SEED = [
    "INSERT INTO projects (project_id, name) VALUES ('p', 'P')",
    "INSERT INTO nodes (project_id, node_id, label) VALUES ('p', 'root', 'Root'), ('p', 'a', 'A')",
    "UPDATE nodes SET parent_id = 'root' WHERE node_id = 'a'",
    "INSERT INTO claims (external_id, content) VALUES ('c1', 'Water is wet')",
    "INSERT INTO verification_results (result_id, claim_id, framework, result, confidence) "
    "VALUES ('00000000-0000-0000-0000-000000000001', 'c1', 'empirical', '{}', 0.5)",
    "INSERT INTO consensus_decisions (claim_id, consensus_result, participating_frameworks, "
    "consensus_type, consensus_confidence) VALUES ('c1', '{}', '{empirical}', 'single', 0.5)",
    "INSERT INTO training_data (id, framework, claim_text, validity) "
    "VALUES ('00000000-0000-0000-0000-000000000002', 'empirical', 'x', true)",
    "INSERT INTO model_checkpoints (model_name, version, checkpoint_path) VALUES ('m', '1', '/m')",
    "INSERT INTO service_health (service_name, instance_id, status, last_heartbeat) "
    "VALUES ('svc', 'i-1', 'ok', now())",
    "INSERT INTO dead_letters (job_id, function, payload, error_class, error_message) "
    "VALUES ('j1', 'f', '{}', 'E', 'm')",
]


async def run(conn: AsyncConnection, *statements: str) -> None:
    """Run ``statements`` in order on ``conn``."""
    for statement in statements:
        await conn.execute(text(statement))


async def test_every_audited_table_has_its_triggers_and_every_updated_at_its_touch(
    engine: AsyncEngine,
) -> None:
    triggers = await rows(
        engine,
        "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE NOT t.tgisinternal ORDER BY 1, 2",
    )
    operations = ("delete", "insert", "update")
    expected = {(table, f"audit_{op}") for table in AUDITED for op in operations}
    expected |= {(table, "touch_updated_at") for table in TOUCHED}
    assert set(triggers) == expected
    with_updated_at = {t.name for t in metadata.sorted_tables if "updated_at" in t.c}
    assert with_updated_at == set(TOUCHED)
    for table, (_, keys) in AUDITED.items():
        assert set(keys) <= set(metadata.tables[table].c.keys()), table


async def test_a_manual_insert_update_and_delete_are_audited_with_who_made_them(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await run(conn, "SET LOCAL application_name = 'manual-fix'", *SEED[:3])
    async with engine.begin() as conn:
        await run(
            conn,
            "SET LOCAL application_name = 'manual-fix'",
            "UPDATE nodes SET status = 'pruned', rubric_score = 0.25 WHERE node_id = 'a'",
            "UPDATE nodes SET label = label",  # changes nothing: no audit row
        )
    async with engine.begin() as conn:
        await run(conn, "DELETE FROM nodes WHERE node_id = 'a'")
    trail = await rows(
        engine,
        "SELECT entity_type, entity_id, action, changes, actor, db_user, application, "
        "transaction_id FROM audit_log ORDER BY id",
    )
    assert [(t[0], t[1], t[2]) for t in trail] == [
        ("project", "p", "insert"),
        ("node", "p/root", "insert"),
        ("node", "p/a", "insert"),
        # The seed's UPDATE moved a under root, in the seed's own transaction.
        ("node", "p/a", "update"),
        ("node", "p/a", "update"),
        ("node", "p/a", "delete"),
    ]
    assert trail[3][3] == {"before": {"parent_id": None}, "after": {"parent_id": "root"}}
    # Outside the pipeline, the score is audited like any other column.
    assert trail[4][3] == {
        "before": {"status": "alive", "rubric_score": None},
        "after": {"status": "pruned", "rubric_score": 0.25},
    }
    assert trail[2][3]["after"]["label"] == "A" and "updated_at" not in trail[2][3]["after"]
    assert trail[5][3]["before"]["status"] == "pruned" and "after" not in trail[5][3]
    assert {t[4] for t in trail} == {None}
    assert {t[5] for t in trail} == {await scalar(engine, "SELECT session_user")}
    assert [t[6] for t in trail] == ["manual-fix"] * 5 + [None]
    assert len({t[7] for t in trail[:4]}) == 1 and len({t[7] for t in trail}) == 3


async def test_a_changed_key_is_a_row_gone_and_a_row_come(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await run(conn, SEED[3])
    async with engine.begin() as conn:
        await run(conn, "UPDATE claims SET external_id = 'c2' WHERE external_id = 'c1'")
    trail = await rows(
        engine, "SELECT entity_id, changes FROM audit_log WHERE action = 'update' ORDER BY 1"
    )
    assert [t[0] for t in trail] == ["c1", "c2"]
    assert trail[0][1].keys() == {"before"} and trail[0][1]["before"]["content"] == "Water is wet"
    assert trail[1][1].keys() == {"after"} and trail[1][1]["after"]["external_id"] == "c2"


async def test_updated_at_moves_on_a_manual_update_of_every_table_that_has_one(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await run(conn, *SEED)
    before = await _updated_at(engine)
    assert before.keys() == set(TOUCHED)
    await asyncio.sleep(0.01)
    async with engine.begin() as conn:
        for table in TOUCHED:
            # A writer that does not set updated_at (as the pipeline's statements do).
            first = next(iter(metadata.tables[table].primary_key.columns)).name
            await conn.execute(text(f"UPDATE {table} SET {first} = {first}"))
    after = await _updated_at(engine)
    assert all(after[t] > before[t] for t in TOUCHED), (before, after)
    # A writer that sets it keeps its value.
    async with engine.begin() as conn:
        await run(conn, "UPDATE claims SET updated_at = '2020-01-01T00:00:00Z'")
    assert str(await scalar(engine, "SELECT updated_at FROM claims")).startswith("2020-01-01")


async def _updated_at(engine: AsyncEngine) -> dict[str, Any]:
    found = {}
    for table in TOUCHED:
        found[table] = await scalar(engine, f"SELECT max(updated_at) FROM {table}")
    return found


async def _score_update(database_url: str, *, audit_scores: bool) -> None:
    settings = Settings(database_url=database_url, audit_score_updates=audit_scores)
    pipeline = create_engine(settings)
    try:
        async with pipeline.begin() as conn:
            version = await conn.scalar(text("SELECT max(rubric_score_version) + 1 FROM nodes"))
            update = ("p", "a", 0.5, version, None, None, None, None, None, False)
            await NODE_UPDATES.write(conn, NODE_UPDATES.merged_rows([update]))
    finally:
        await pipeline.dispose()


async def test_the_pipelines_score_only_updates_are_audited_only_when_set(
    engine: AsyncEngine, database_url: str
) -> None:
    async with engine.begin() as conn:
        await run(conn, *SEED[:3])
    count = "SELECT count(*) FROM audit_log WHERE action = 'update' AND application = 'pipeline'"
    await _score_update(database_url, audit_scores=False)
    assert await scalar(engine, "SELECT rubric_score FROM nodes WHERE node_id = 'a'") == 0.5
    assert await scalar(engine, count) == 0
    await _score_update(database_url, audit_scores=True)
    assert await scalar(engine, count) == 1
    assert await scalar(
        engine, "SELECT changes->'after' FROM audit_log WHERE application = 'pipeline'"
    ) == {"rubric_score_version": 2}


async def test_actors_of_a_statement_never_reach_the_next_one(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await run(conn, *SEED[:3])
    async with engine.connect() as conn, conn.begin():
        status = ("p", "a", None, None, None, None, "pruned", 5, "judge", False)
        await NODE_UPDATES.write(conn, NODE_UPDATES.merged_rows([status]))
        status = ("p", "a", None, None, None, None, "alive", 6, None, False)
        await NODE_UPDATES.write(conn, NODE_UPDATES.merged_rows([status]))
    actors = await rows(
        engine,
        "SELECT changes->'after'->>'status', actor FROM audit_log "
        "WHERE entity_id = 'p/a' AND action = 'update' AND changes->'after' ? 'status' "
        "ORDER BY id",
    )
    assert actors == [("pruned", "judge"), ("alive", None)]


async def test_the_migration_removes_the_triggers_and_columns_and_brings_them_back(
    engine: AsyncEngine, database_url: str
) -> None:
    async with engine.begin() as conn:
        await run(conn, *SEED[:3])
    await engine.dispose()
    await asyncio.to_thread(migrate, database_url, "0007", down=True)
    functions = "SELECT count(*) FROM pg_proc WHERE proname LIKE 'pipeline\\_%'"
    triggers = "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal"
    assert await scalar(engine, functions) == 0
    assert await scalar(engine, triggers) == 0
    assert (
        await scalar(
            engine,
            "SELECT count(*) FROM information_schema.columns WHERE column_name IN "
            "('db_user', 'application', 'transaction_id') OR (column_name = 'updated_at' "
            "AND table_name IN ('training_data', 'model_checkpoints', 'service_health', "
            "'verification_results', 'dead_letters'))",
        )
        == 0
    )
    # Rows audited under 0009 stay, in the columns 0007 knows.
    assert await scalar(engine, "SELECT count(*) FROM audit_log") == 4
    async with engine.begin() as conn:
        await run(conn, "UPDATE nodes SET label = 'B' WHERE node_id = 'a'")
    assert await scalar(engine, "SELECT count(*) FROM audit_log") == 4
    await engine.dispose()
    await asyncio.to_thread(migrate, database_url, "head")
    async with engine.begin() as conn:
        await run(conn, "UPDATE nodes SET label = 'C' WHERE node_id = 'a'")
    assert await scalar(engine, "SELECT count(*) FROM audit_log") == 5
    assert await scalar(engine, functions) == 2


async def test_a_score_batchs_hint_covers_its_own_statement_only(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await run(conn, *SEED[:3])
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False))
    pipeline = create_engine(settings)
    try:
        async with pipeline.begin() as conn:
            score = ("p", "a", 0.5, 1, None, None, None, None, None, False)
            await NODE_UPDATES.write(conn, NODE_UPDATES.merged_rows([score]))
            # The same transaction's next update of nodes is audited as any other.
            await run(conn, "UPDATE nodes SET label = 'A2' WHERE node_id = 'a'")
    finally:
        await pipeline.dispose()
    assert await rows(
        engine,
        "SELECT changes FROM audit_log WHERE action = 'update' AND application = 'pipeline'",
    ) == [({"before": {"label": "A"}, "after": {"label": "A2"}},)]
