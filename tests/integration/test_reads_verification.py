"""The claim-verification read repository against real PostgreSQL.

Rows are written with plain Core inserts, never through the write path.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from operator import itemgetter
from typing import Any

import pytest
from sqlalchemy import func, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from tree_factory import captured, count_statements, insert_rows

from pipeline.reads import Page, Verification, VerificationCursor, VerificationReads
from pipeline.schema import metadata

CLAIMS = metadata.tables["claims"]
RESULTS = metadata.tables["verification_results"]
CONSENSUS = metadata.tables["consensus_decisions"]
TRAINING = metadata.tables["training_data"]
CHECKPOINTS = metadata.tables["model_checkpoints"]
HEALTH = metadata.tables["service_health"]
T0 = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
FRAMEWORKS = ("fever", "scifact", "vitaminc")


@pytest.fixture
def reads(engine: AsyncEngine) -> VerificationReads:
    """A repository on the test's engine."""
    return VerificationReads(engine)


def result_row(
    claim_id: str, framework: str, created_at: dt.datetime, **extra: Any
) -> dict[str, Any]:
    """A verification_results row; the result_id is random unless given."""
    return {
        "result_id": uuid.uuid4(),
        "claim_id": claim_id,
        "framework": framework,
        "result": {"verdict": "supported", "framework": framework},
        "confidence": 0.5,
        "evidence": {"urls": [f"https://example.org/{claim_id}"]},
        "processing_time_ms": 12,
        "model_version": "v1",
        "created_at": created_at,
        **extra,
    }


def claim_row(external_id: str) -> dict[str, Any]:
    """A claims row."""
    return {
        "external_id": external_id,
        "content": f"content of {external_id}",
        "claim_type": "factual",
        "source": "unit",
        "metadata": {"lang": "en"},
        "version": 3,
    }


def consensus_row(claim_id: str, frameworks: list[str]) -> dict[str, Any]:
    """A consensus_decisions row."""
    return {
        "claim_id": claim_id,
        "consensus_result": {"verdict": "supported"},
        "participating_frameworks": frameworks,
        "consensus_type": "majority",
        "consensus_confidence": 0.75,
        "decision_time_ms": 40,
        "version": 7,
    }


def fields_of(model: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The read model's values of the fields an inserted row set."""
    return {name: getattr(model, name) for name in row}


async def test_verifications_for_claim_in_creation_order(
    engine: AsyncEngine, reads: VerificationReads
) -> None:
    ids = sorted(uuid.uuid4() for _ in range(5))
    minute = dt.timedelta(minutes=1)
    rows = [
        result_row("c-1", "vitaminc", T0 + 2 * minute, result_id=ids[0], confidence=0.25),
        result_row("c-1", "fever", T0, result_id=ids[4], processing_time_ms=None),
        # Two share a timestamp, so the tie must be broken by result_id.
        result_row("c-1", "scifact", T0 + minute, result_id=ids[3]),
        result_row("c-1", "fever", T0 + minute, result_id=ids[2], model_version=None),
        result_row("c-2", "fever", T0, result_id=ids[1]),
    ]
    await insert_rows(engine, RESULTS, rows)

    got = await reads.verifications_for_claim("c-1")
    assert [v.result_id for v in got] == [ids[4], ids[2], ids[3], ids[0]]
    by_id = {row["result_id"]: row for row in rows}
    assert all(fields_of(v, by_id[v.result_id]) == by_id[v.result_id] for v in got)
    assert got[-1].cursor == VerificationCursor(T0 + 2 * minute, ids[0])
    assert [v.result_id for v in await reads.verifications_for_claim("c-2")] == [ids[1]]
    assert await reads.verifications_for_claim("no-such-claim") == []


async def walk_recent(
    reads: VerificationReads, limit: int, before: VerificationCursor | None = None
) -> list[Page[Verification, VerificationCursor]]:
    """Every page of recent verifications from ``before``, following the cursors to the end."""
    pages = [await reads.recent_verifications(limit, before)]
    while (cursor := pages[-1].next_cursor) is not None:
        pages.append(await reads.recent_verifications(limit, before=cursor))
    return pages


async def test_recent_verifications_pages_see_every_row_once_newest_first(
    engine: AsyncEngine, reads: VerificationReads
) -> None:
    rng = random.Random(11)
    # 300 rows over 40 distinct timestamps: most pages cut through a run of equal timestamps.
    stamps = [T0 + dt.timedelta(seconds=n) for n in range(40)]
    rows = [result_row(f"c-{i % 37}", "fever", rng.choice(stamps)) for i in range(300)]
    await insert_rows(engine, RESULTS, rows)
    newest_first = sorted(rows, key=itemgetter("created_at", "result_id"), reverse=True)
    expected = [r["result_id"] for r in newest_first]

    pages = await walk_recent(reads, 23)
    assert [v.result_id for page in pages for v in page.items] == expected
    assert [len(page.items) for page in pages] == [23] * 13 + [1]
    assert all(page.next_cursor == page.items[-1].cursor for page in pages[:-1])
    assert pages[-1].next_cursor is None

    # A limit dividing the rows exactly still ends on a full page, never an empty one.
    exact = await walk_recent(reads, 100)
    assert [len(page.items) for page in exact] == [100, 100, 100]
    assert [v.result_id for page in exact for v in page.items] == expected
    whole = await reads.recent_verifications(1000)
    assert len(whole.items) == 300 and whole.next_cursor is None
    with pytest.raises(ValueError):
        await reads.recent_verifications(0)

    # A verification recorded during a walk does not shift the pages still to come.
    first = await reads.recent_verifications(23)
    await insert_rows(engine, RESULTS, [result_row("c", "fever", T0 + dt.timedelta(hours=1))])
    rest = await walk_recent(reads, 23, first.next_cursor)
    assert [v.result_id for page in [first, *rest] for v in page.items] == expected


async def test_keyset_reads_are_served_by_their_indexes(
    engine: AsyncEngine, reads: VerificationReads
) -> None:
    stamps = [T0 + dt.timedelta(seconds=n) for n in range(50)]
    await insert_rows(engine, RESULTS, [result_row("c", "fever", t) for t in stamps * 40])
    training = [training_row(FRAMEWORKS[i % 3], T0, used=i % 2 == 0) for i in range(2000)]
    await insert_rows(engine, TRAINING, training)
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE verification_results, training_data"))
        await conn.commit()
    page = await reads.recent_verifications(10)
    examples = await reads.unused_training_data("fever", limit=10)
    with captured(engine) as sent:
        await reads.recent_verifications(10, before=page.next_cursor)
        await reads.unused_training_data("fever", limit=10, after=examples[-1].cursor)
    async with engine.begin() as conn:
        # The tables are small, so a sequential scan and a sort may cost about as much as the
        # index; with sequential scans off the check is deterministic: the plans show that the
        # predicates (row comparisons, the partial index's NOT used_in_training) fit the indexes.
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        recent, unused = [
            "\n".join(row[0] for row in await conn.exec_driver_sql("EXPLAIN " + sql, params))
            for sql, params in sent
        ]
    assert "Index Scan using ix_verification_results_recent" in recent and "Sort" not in recent
    assert "Index Scan using ix_training_data_unused" in unused and "Sort" not in unused


async def test_claim_with_its_verifications_and_consensus(
    engine: AsyncEngine, reads: VerificationReads
) -> None:
    await insert_rows(engine, CLAIMS, [claim_row("c-1"), claim_row("c-bare")])
    results = [result_row("c-1", f, T0 + dt.timedelta(seconds=i)) for i, f in enumerate(FRAMEWORKS)]
    results.append(result_row("c-unstored", "fever", T0))
    await insert_rows(engine, RESULTS, results)
    decisions = [consensus_row("c-1", list(FRAMEWORKS)), consensus_row("c-unstored", [])]
    await insert_rows(engine, CONSENSUS, decisions)

    consensus = await reads.consensus_for_claim("c-1")
    as_read = {**decisions[0], "participating_frameworks": FRAMEWORKS}  # a tuple, not a list
    assert consensus is not None and fields_of(consensus, decisions[0]) == as_read
    hash(consensus)  # frozen and hashable, although it holds a mapping
    empty = await reads.consensus_for_claim("c-unstored")
    assert empty is not None and empty.participating_frameworks == ()
    assert await reads.consensus_for_claim("no-such-claim") is None

    found = await reads.claim("c-1")
    assert found is not None and isinstance(found.claim.id, uuid.UUID)
    assert fields_of(found.claim, claim_row("c-1")) == claim_row("c-1")
    assert [v.result_id for v in found.verifications] == [r["result_id"] for r in results[:3]]
    assert found.consensus == consensus

    bare = await reads.claim("c-bare")
    assert bare is not None and bare.verifications == () and bare.consensus is None
    # Verifications name a claim by external id without a foreign key; without the claim row,
    # claim() has nothing to return, while verifications_for_claim still finds them.
    assert await reads.claim("c-unstored") is None
    assert len(await reads.verifications_for_claim("c-unstored")) == 1


async def test_claim_issues_a_constant_number_of_statements(
    engine: AsyncEngine, reads: VerificationReads
) -> None:
    await insert_rows(engine, CLAIMS, [claim_row("one"), claim_row("many")])
    results = [result_row("one", "fever", T0)]
    results += [
        result_row("many", FRAMEWORKS[i % 3], T0 + dt.timedelta(seconds=i)) for i in range(200)
    ]
    await insert_rows(engine, RESULTS, results)
    await insert_rows(engine, CONSENSUS, [consensus_row("many", list(FRAMEWORKS))])
    await reads.consensus_for_claim("one")  # connect once, so first-connect queries are not counted

    with count_statements(engine) as for_one:
        one = await reads.claim("one")
    with count_statements(engine) as for_many:
        many = await reads.claim("many")
    with count_statements(engine) as for_missing:
        assert await reads.claim("no-such-claim") is None
    assert one is not None and len(one.verifications) == 1 and one.consensus is None
    assert many is not None and len(many.verifications) == 200 and many.consensus is not None
    assert (len(for_one), len(for_many), len(for_missing)) == (3, 3, 1)


async def test_claim_snapshot_does_not_leak_into_the_pool(database_url: str) -> None:
    # One pooled connection, so the next checkout is the very connection claim() used.
    single = create_async_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with single.begin() as conn:
            await conn.execute(insert(CLAIMS), [claim_row("c-1")])
        assert await VerificationReads(single).claim("c-1") is not None
        async with single.connect() as conn:
            isolation = await conn.scalar(text("SHOW transaction_isolation"))
            read_only = await conn.scalar(text("SHOW transaction_read_only"))
        assert (isolation, read_only) == ("read committed", "off")
    finally:
        await single.dispose()


async def test_reads_over_a_session_see_its_uncommitted_writes(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        reads = VerificationReads(session)
        await session.execute(insert(CLAIMS), [claim_row("c-1")])
        await session.execute(insert(RESULTS), [result_row("c-1", "fever", T0)])
        found = await reads.claim("c-1")
        assert found is not None and len(found.verifications) == 1
        assert len((await reads.recent_verifications()).items) == 1
        await session.rollback()
    assert await VerificationReads(engine).claim("c-1") is None


def training_row(framework: str, created_at: dt.datetime, *, used: bool) -> dict[str, Any]:
    """A training_data row with a random id."""
    return {
        "id": uuid.uuid4(),
        "framework": framework,
        "claim_id": "c-1",
        "claim_text": "the sky is blue",
        "evidence": {"k": 1},
        "validity": True,
        "confidence": 0.5,
        "metadata": {"m": 2},
        "used_in_training": used,
        "training_batch_id": "b-1" if used else None,
        "created_at": created_at,
    }


async def test_unused_training_data_pages_see_every_unused_example_once(
    engine: AsyncEngine, reads: VerificationReads
) -> None:
    rng = random.Random(5)
    stamps = [T0 + dt.timedelta(minutes=n) for n in range(25)]
    rows = [
        training_row(rng.choice(FRAMEWORKS[:2]), rng.choice(stamps), used=rng.random() < 0.3)
        for _ in range(400)
    ]
    await insert_rows(engine, TRAINING, rows)
    oldest_first = sorted(rows, key=itemgetter("created_at", "id"))
    expected = [
        r["id"] for r in oldest_first if r["framework"] == "fever" and not r["used_in_training"]
    ]
    assert len(expected) > 100

    seen: list[uuid.UUID] = []
    page = await reads.unused_training_data("fever", limit=19)
    while page:
        assert len(page) <= 19
        assert all(e.framework == "fever" and not e.used_in_training for e in page)
        seen += [e.id for e in page]
        page = await reads.unused_training_data("fever", limit=19, after=page[-1].cursor)
    assert seen == expected

    by_id = {row["id"]: row for row in rows}
    first = (await reads.unused_training_data("fever", limit=1))[0]
    assert fields_of(first, by_id[first.id]) == by_id[first.id]
    assert await reads.unused_training_data("vitaminc") == []
    with pytest.raises(ValueError):
        await reads.unused_training_data("fever", limit=0)


def checkpoint_row(
    model: str, framework: str | None, version: str, *, active: bool
) -> dict[str, Any]:
    """A model_checkpoints row."""
    return {
        "model_name": model,
        "framework": framework,
        "version": version,
        "checkpoint_path": f"s3://models/{model}/{version}",
        "metrics": {"f1": 0.9},
        "training_config": {"epochs": 3},
        "is_active": active,
        "activation_version": 2 if active else 0,
        "activated_at": T0 if active else None,
    }


async def test_active_checkpoints_one_per_framework(
    engine: AsyncEngine, reads: VerificationReads
) -> None:
    await insert_rows(
        engine,
        CHECKPOINTS,
        [
            checkpoint_row("verifier", "fever", "1", active=False),
            checkpoint_row("verifier", "fever", "2", active=True),
            checkpoint_row("verifier", "scifact", "3", active=True),
            checkpoint_row("verifier", "scifact", "4", active=False),
            checkpoint_row("other", "fever", "1", active=True),
        ],
    )
    active = await reads.active_checkpoints("verifier")
    assert [(c.framework, c.version) for c in active] == [("fever", "2"), ("scifact", "3")]
    assert all(c.is_active and c.model_name == "verifier" for c in active)
    fever = await reads.active_checkpoint("verifier", "fever")
    assert fever is not None and fever == active[0]
    expected = checkpoint_row("verifier", "fever", "2", active=True)
    assert fields_of(fever, expected) == expected
    assert await reads.active_checkpoint("verifier", "vitaminc") is None
    # framework=None is the framework-agnostic checkpoint, and there is none yet.
    assert await reads.active_checkpoint("verifier") is None

    await insert_rows(engine, CHECKPOINTS, [checkpoint_row("verifier", None, "5", active=True)])
    agnostic = await reads.active_checkpoint("verifier")
    assert agnostic is not None and (agnostic.framework, agnostic.version) == (None, "5")
    assert [c.version for c in await reads.active_checkpoints("verifier")] == ["5", "2", "3"]
    assert await reads.active_checkpoints("no-such-model") == []


async def test_stale_services(engine: AsyncEngine, reads: VerificationReads) -> None:
    # Heartbeats are stamped with the database's clock, the one stale_services compares with.
    async with engine.begin() as conn:
        for service, instance, age in (
            ("verifier", "fresh", dt.timedelta(0)),
            ("verifier", "old", dt.timedelta(minutes=10)),
            ("trainer", "older", dt.timedelta(hours=1)),
        ):
            await conn.execute(
                insert(HEALTH).values(
                    service_name=service,
                    instance_id=instance,
                    status="healthy",
                    last_heartbeat=func.now() - age,
                    metadata={"pid": 1},
                )
            )
    stale = await reads.stale_services(dt.timedelta(minutes=5))
    assert [(s.service_name, s.instance_id) for s in stale] == [
        ("trainer", "older"),
        ("verifier", "old"),
    ]
    assert stale[1].status == "healthy" and stale[1].metadata == {"pid": 1}
    only = await reads.stale_services(dt.timedelta(minutes=5), service_name="verifier")
    assert [s.instance_id for s in only] == ["old"]
    assert [s.instance_id for s in await reads.stale_services(dt.timedelta(minutes=30))] == [
        "older"
    ]
    assert await reads.stale_services(dt.timedelta(days=1)) == []
    with pytest.raises(ValueError):
        await reads.stale_services(dt.timedelta(seconds=-1))
