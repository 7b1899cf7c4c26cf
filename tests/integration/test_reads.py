"""The taxonomy read repository against real PostgreSQL, checked against answers computed in Python.

Data is written with plain Core inserts (see ``tree_factory``), never through the write path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import uuid
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from tree_factory import (
    GeneratedTree,
    add_rubric,
    add_scores,
    count_statements,
    generate_tree,
    insert_project,
    insert_tree,
    sample_roots,
    stored_stats,
)

from pipeline.reads import PrincipleScoreCache, TaxonomyReads
from pipeline.schema import metadata
from pipeline.schema.taxonomy import branch_stats_lock_key

PROJECT = "proj-a"
OTHER = "proj-b"
RUBRIC = "quality"
TREE_SIZE = 3000
STATS_FIELDS = (
    "node_count",
    "alive_count",
    "scored_count",
    "mean_score",
    "max_score",
    "max_depth",
)
SAMPLES = metadata.tables["labeled_samples"]
LOCK_SHARED = text(f"SELECT pg_advisory_xact_lock_shared({branch_stats_lock_key(':project_id')})")


@pytest.fixture(scope="module")
def tree() -> GeneratedTree:
    """The main project's 3,000-node forest."""
    return generate_tree(seed=20240611, size=TREE_SIZE)


@pytest.fixture(scope="module")
def other_tree(tree: GeneratedTree) -> GeneratedTree:
    """Another project's forest reusing node ids of the main one, with a different shape."""
    ids = list(tree.nodes)
    random.Random(7).shuffle(ids)
    return generate_tree(seed=99, size=600, roots=2, ids=ids)


@pytest.fixture
async def loaded(engine: AsyncEngine, tree: GeneratedTree, other_tree: GeneratedTree) -> None:
    """Both projects' trees written to this test's database."""
    await insert_tree(engine, PROJECT, tree)
    await insert_tree(engine, OTHER, other_tree)


@pytest.fixture
def reads(engine: AsyncEngine) -> TaxonomyReads:
    """A repository on the test's engine with a cache of its own."""
    return TaxonomyReads(engine, principle_cache=PrincipleScoreCache(10_000))


async def test_node_and_children_are_scoped_by_project(
    reads: TaxonomyReads, loaded: None, tree: GeneratedTree, other_tree: GeneratedTree
) -> None:
    shared = next(n for n in other_tree.nodes if other_tree.children[n])
    for project_id, source in ((PROJECT, tree), (OTHER, other_tree)):
        node = await reads.node(project_id, shared)
        expected = source.nodes[shared]
        assert node is not None
        assert (node.project_id, node.node_id, node.parent_id) == (
            project_id,
            shared,
            expected.parent_id,
        )
        assert (node.label, node.content, node.status) == (
            expected.label,
            expected.content,
            expected.status,
        )
        assert (node.rubric_score, node.ucb_score) == (expected.rubric_score, expected.ucb_score)
        assert node.metadata == expected.metadata
        children = await reads.children(project_id, shared)
        assert [c.node_id for c in children] == sorted(source.children[shared])
        assert all(c.parent_id == shared and c.project_id == project_id for c in children)
    assert await reads.node(PROJECT, "no-such-node") is None
    assert await reads.node("no-such-project", shared) is None
    assert await reads.children(PROJECT, "no-such-node") == []


async def test_subtree_matches_the_generated_tree(
    reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    for root in sample_roots(tree):
        for max_depth in (None, 0, 1, 3):
            got = await reads.subtree(PROJECT, root, max_depth=max_depth)
            assert [(n.node.node_id, n.depth) for n in got] == tree.subtree(root, max_depth)
            assert all(n.node.project_id == PROJECT for n in got)
        full = await reads.subtree(PROJECT, root)
        assert {n.node.node_id: n.node.status for n in full} == {
            node_id: tree.nodes[node_id].status for node_id, _ in tree.subtree(root)
        }
    whole = sum([len(await reads.subtree(PROJECT, root)) for root in tree.roots])
    assert whole == TREE_SIZE
    assert await reads.subtree(PROJECT, "no-such-node") == []
    with pytest.raises(ValueError):
        await reads.subtree(PROJECT, tree.roots[0], max_depth=-1)


async def test_ancestors_and_path_match_the_generated_tree(
    reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    for node_id in sample_roots(tree):
        expected = tree.path(node_id)
        path = await reads.path(PROJECT, node_id)
        ancestors = await reads.ancestors(PROJECT, node_id)
        assert [n.node_id for n in path] == expected
        assert [n.node_id for n in ancestors] == expected[:-1]
    deepest = max(tree.nodes, key=tree.depth)
    assert len(await reads.path(PROJECT, deepest)) == tree.depth(deepest) + 1 > 10
    assert await reads.ancestors(PROJECT, tree.roots[0]) == []
    assert await reads.path(PROJECT, "no-such-node") == []


async def test_alive_nodes_pages_cover_every_alive_node_once(
    reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    pages: list[list[str]] = []
    after: str | None = None
    while page := await reads.alive_nodes(PROJECT, limit=257, after_node_id=after):
        assert all(n.status == "alive" and n.project_id == PROJECT for n in page)
        pages.append([n.node_id for n in page])
        after = page[-1].node_id
    assert [node for page in pages for node in page] == tree.alive_ids()
    assert all(len(page) == 257 for page in pages[:-1])
    assert len(pages) > 1


async def test_top_by_ucb_matches_the_generated_tree(
    reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    for alive_only in (True, False):
        for k in (0, 1, 10, 250, TREE_SIZE + 10):
            got = await reads.top_by_ucb(PROJECT, k, alive_only=alive_only)
            assert [n.node_id for n in got] == tree.top_by_ucb(k, alive_only=alive_only)
    everything = await reads.top_by_ucb(PROJECT, TREE_SIZE, alive_only=False)
    assert everything[-1].ucb_score is None  # nulls last, and the tree has some
    assert any(a.ucb_score == b.ucb_score for a, b in itertools.pairwise(everything))


async def test_branch_stats_match_the_generated_tree(
    engine: AsyncEngine, reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    for node_id in sample_roots(tree):
        stats = await reads.branch_stats(PROJECT, node_id)
        assert stats is not None
        assert (stats.project_id, stats.node_id) == (PROJECT, node_id)
        assert {f: getattr(stats, f) for f in STATS_FIELDS} == tree.stats(node_id)
        stored = await stored_stats(engine, PROJECT, node_id)
        assert stored is not None
        assert {f: stored[f] for f in STATS_FIELDS} == tree.stats(node_id)


async def test_branch_stats_cache_miss_hit_and_invalidation(
    engine: AsyncEngine, reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    root = max(tree.roots, key=lambda r: len(tree.subtree(r)))
    deep = max((n for n, _ in tree.subtree(root)), key=tree.depth)
    assert tree.depth(deep) >= 3
    assert await stored_stats(engine, PROJECT, root) is None

    with count_statements(engine) as miss:
        first = await reads.branch_stats(PROJECT, root)
    assert first is not None and first.node_count == tree.stats(root)["node_count"]
    assert len(miss) == 3 and "pg_advisory_xact_lock" in miss[1]
    assert await stored_stats(engine, PROJECT, root) is not None

    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE branch_stats SET node_count = 999999 WHERE project_id = :p AND node_id = :n"
            ),
            {"p": PROJECT, "n": root},
        )
    with count_statements(engine) as hit:
        served = await reads.branch_stats(PROJECT, root)
    assert served is not None and served.node_count == 999999
    assert len(hit) == 1

    # What the write path does: change a node and delete its ancestors' rows, in one transaction.
    async with engine.begin() as conn:
        await conn.execute(LOCK_SHARED, {"project_id": PROJECT})
        await conn.execute(
            text("UPDATE nodes SET rubric_score = 1000.0 WHERE project_id = :p AND node_id = :n"),
            {"p": PROJECT, "n": deep},
        )
        await conn.execute(
            text("DELETE FROM branch_stats WHERE project_id = :p AND node_id = ANY(:ids)"),
            {"p": PROJECT, "ids": tree.path(deep)},
        )
    after = await reads.branch_stats(PROJECT, root)
    expected = tree.stats(root)
    assert after is not None
    assert after.node_count == expected["node_count"]
    assert after.max_score == 1000.0
    assert after.scored_count == expected["scored_count"] + (tree.nodes[deep].rubric_score is None)
    stored = await stored_stats(engine, PROJECT, root)
    assert stored is not None and stored["max_score"] == 1000.0

    assert await reads.branch_stats(PROJECT, "no-such-node") is None
    assert await stored_stats(engine, PROJECT, "no-such-node") is None


async def test_branch_stats_miss_waits_for_a_writer_holding_the_lock(
    engine: AsyncEngine, reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    root = tree.roots[0]
    leaf = next(n for n, _ in reversed(tree.subtree(root)) if not tree.children[n])
    async with engine.connect() as writer:
        await writer.begin()
        await writer.execute(LOCK_SHARED, {"project_id": PROJECT})
        await writer.execute(
            text("UPDATE nodes SET rubric_score = 5000.0 WHERE project_id = :p AND node_id = :n"),
            {"p": PROJECT, "n": leaf},
        )
        reader = asyncio.create_task(reads.branch_stats(PROJECT, root))
        async with engine.connect() as probe:
            for _ in range(200):
                waiting = await probe.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                )
                await probe.rollback()
                if waiting:
                    break
                await asyncio.sleep(0.02)
        assert waiting == 1 and not reader.done()
        await writer.commit()
    stats = await asyncio.wait_for(reader, timeout=10)
    assert stats is not None and stats.max_score == 5000.0
    stored = await stored_stats(engine, PROJECT, root)
    assert stored is not None and stored["max_score"] == 5000.0


async def test_principle_scores_never_serve_stale_or_partial_sets(
    engine: AsyncEngine, reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    node, bare = list(tree.nodes)[:2]
    v1 = await add_rubric(engine, PROJECT, 1, ["clarity", "depth", "novelty"], rubric_id=RUBRIC)
    await add_scores(
        engine, PROJECT, (RUBRIC, 1), v1, {(node, "clarity"): 0.5, (node, "depth"): 0.25}
    )
    cache = reads.principle_cache

    first = await reads.principle_scores(PROJECT, RUBRIC, 1, [node, bare])
    assert first == {node: {"clarity": 0.5, "depth": 0.25}, bare: {}}

    await add_scores(
        engine, PROJECT, (RUBRIC, 1), v1, {(node, "novelty"): 0.75, (bare, "clarity"): 0.125}
    )
    second = await reads.principle_scores(PROJECT, RUBRIC, 1, [node, bare])
    assert second == {
        node: {"clarity": 0.5, "depth": 0.25, "novelty": 0.75},
        bare: {"clarity": 0.125},
    }
    assert cache.hits == 0

    with count_statements(engine) as statements:
        third = await reads.principle_scores(PROJECT, RUBRIC, 1, [node])
    assert third == {node: second[node]}
    assert cache.hits == 1 and statements == []

    v2 = await add_rubric(engine, PROJECT, 2, ["clarity", "depth", "rigour"], rubric_id=RUBRIC)
    await add_scores(
        engine,
        PROJECT,
        (RUBRIC, 2),
        v2,
        {(node, "clarity"): 9.0, (node, "depth"): 8.0, (node, "rigour"): 7.0},
    )
    assert await reads.principle_scores(PROJECT, RUBRIC, 2, [node]) == {
        node: {"clarity": 9.0, "depth": 8.0, "rigour": 7.0}
    }
    assert await reads.principle_scores(PROJECT, RUBRIC, 1, [node]) == {node: second[node]}

    # A version read before it exists answers empty, and is not remembered as empty.
    assert await reads.principle_scores(PROJECT, RUBRIC, 3, [node]) == {node: {}}
    v3 = await add_rubric(engine, PROJECT, 3, ["brevity"], rubric_id=RUBRIC)
    await add_scores(engine, PROJECT, (RUBRIC, 3), v3, {(node, "brevity"): 1.5})
    assert await reads.principle_scores(PROJECT, RUBRIC, 3, [node]) == {node: {"brevity": 1.5}}


async def test_many_reads_issue_a_constant_number_of_statements(
    engine: AsyncEngine, reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    ids = await add_rubric(engine, PROJECT, 1, ["a", "b", "c"], rubric_id=RUBRIC)
    nodes = list(tree.nodes)[:500]
    await add_scores(engine, PROJECT, (RUBRIC, 1), ids, {(n, p): 1.0 for n in nodes for p in ids})
    await reads.node(PROJECT, nodes[0])  # connect once, so first-connect queries are not counted
    big_root = max(tree.roots, key=lambda r: len(tree.subtree(r)))
    leaf = next(n for n, kids in tree.children.items() if not kids)

    def counted(*calls: Any) -> list[int]:
        return [len(c) for c in calls]

    with count_statements(engine) as small_subtree:
        assert len(await reads.subtree(PROJECT, leaf)) == 1
    with count_statements(engine) as large_subtree:
        assert len(await reads.subtree(PROJECT, big_root)) > 500
    with count_statements(engine) as small_top:
        assert len(await reads.top_by_ucb(PROJECT, 1, alive_only=False)) == 1
    with count_statements(engine) as large_top:
        assert len(await reads.top_by_ucb(PROJECT, TREE_SIZE, alive_only=False)) == TREE_SIZE
    with count_statements(engine) as path:
        assert len(await reads.path(PROJECT, max(tree.nodes, key=tree.depth))) > 10
    assert counted(small_subtree, large_subtree, small_top, large_top, path) == [1, 1, 1, 1, 1]

    with count_statements(engine) as few_scores:
        await TaxonomyReads(engine, principle_cache=PrincipleScoreCache()).principle_scores(
            PROJECT, RUBRIC, 1, nodes[:5]
        )
    with count_statements(engine) as many_scores:
        many = await reads.principle_scores(PROJECT, RUBRIC, 1, nodes)
    assert len(many) == 500 and all(s == {"a": 1.0, "b": 1.0, "c": 1.0} for s in many.values())
    with count_statements(engine) as cached_scores:
        assert await reads.principle_scores(PROJECT, RUBRIC, 1, nodes) == many
    assert counted(few_scores, many_scores, cached_scores) == [2, 2, 0]
    assert reads.principle_cache.hits == 500


async def test_repository_over_a_session(
    engine: AsyncEngine, loaded: None, tree: GeneratedTree
) -> None:
    root = tree.roots[1]
    leaf = next(n for n, _ in reversed(tree.subtree(root)) if not tree.children[n])
    async with AsyncSession(engine) as session:
        reads = TaxonomyReads(session, principle_cache=PrincipleScoreCache())
        assert [(n.node.node_id, n.depth) for n in await reads.subtree(PROJECT, root, 2)] == (
            tree.subtree(root, 2)
        )
        assert [n.node_id for n in await reads.path(PROJECT, leaf)] == tree.path(leaf)
        stats = await reads.branch_stats(PROJECT, root)
        assert stats is not None
        assert {f: getattr(stats, f) for f in STATS_FIELDS} == tree.stats(root)
        # A miss through a session is computed but not stored.
        assert await session.scalar(text("SELECT count(*) FROM branch_stats")) == 0

        # Reads see the session's own uncommitted writes.
        await session.execute(
            text("UPDATE nodes SET rubric_score = 777.0 WHERE project_id = :p AND node_id = :n"),
            {"p": PROJECT, "n": leaf},
        )
        node = await reads.node(PROJECT, leaf)
        assert node is not None and node.rubric_score == 777.0
        stats = await reads.branch_stats(PROJECT, root)
        assert stats is not None and stats.max_score == 777.0
        await session.rollback()

    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO branch_stats (project_id, node_id, node_count, alive_count,"
                " scored_count, mean_score, max_score, max_depth)"
                " VALUES (:p, :n, 42, 0, 0, NULL, NULL, 0)"
            ),
            {"p": PROJECT, "n": root},
        )
    async with AsyncSession(engine) as session:
        stored = await TaxonomyReads(session).branch_stats(PROJECT, root)
        assert stored is not None and stored.node_count == 42


async def test_rubric_with_principles(engine: AsyncEngine, reads: TaxonomyReads) -> None:
    async with engine.begin() as conn:
        await insert_project(conn, PROJECT)
    ids = await add_rubric(engine, PROJECT, 4, ["first", "second", "third"], rubric_id=RUBRIC)
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO rubrics (project_id, rubric_id, version) VALUES (:p, 'empty', 0)"),
            {"p": PROJECT},
        )
    rubric = await reads.rubric(PROJECT, RUBRIC, 4)
    assert rubric is not None
    assert (rubric.project_id, rubric.rubric_id, rubric.version) == (PROJECT, RUBRIC, 4)
    # add_rubric gives later names lower positions.
    assert [p.name for p in rubric.principles] == ["third", "second", "first"]
    assert [p.position for p in rubric.principles] == [1, 2, 3]
    third = rubric.principles[0]
    assert (third.principle_id, third.description, third.weight) == (
        ids["third"],
        "about third",
        3.0,
    )
    empty = await reads.rubric(PROJECT, "empty", 0)
    assert empty is not None and empty.principles == ()
    assert await reads.rubric(PROJECT, RUBRIC, 5) is None


async def test_labeled_samples_in_creation_order(
    engine: AsyncEngine, reads: TaxonomyReads, loaded: None, tree: GeneratedTree
) -> None:
    node, other_node = list(tree.nodes)[:2]
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    ids = sorted(uuid.uuid4() for _ in range(4))
    rows = [
        # Two samples share a timestamp, so the tie must be broken by sample_id.
        (ids[3], node, start + dt.timedelta(minutes=1)),
        (ids[1], node, start + dt.timedelta(minutes=2)),
        (ids[0], node, start + dt.timedelta(minutes=2)),
        (ids[2], other_node, start),
    ]
    async with engine.begin() as conn:
        await conn.execute(
            insert(SAMPLES),
            [
                {
                    "sample_id": sample_id,
                    "project_id": PROJECT,
                    "node_id": node_id,
                    "label": "good",
                    "text": f"text {sample_id}",
                    "annotator": "ann",
                    "metadata": {"n": 1},
                    "created_at": created_at,
                }
                for sample_id, node_id, created_at in rows
            ],
        )
    samples = await reads.labeled_samples(PROJECT, node)
    assert [s.sample_id for s in samples] == [ids[3], ids[0], ids[1]]
    assert samples[0].text == f"text {ids[3]}" and samples[0].metadata == {"n": 1}
    assert all(s.node_id == node and s.project_id == PROJECT for s in samples)
    assert await reads.labeled_samples(OTHER, node) == []
