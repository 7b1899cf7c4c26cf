"""Whole-project reads against real PostgreSQL, checked against answers computed in Python.

Data is written with plain Core inserts (see ``tree_factory``), never through the write path.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from tree_factory import (
    GeneratedTree,
    add_rubric,
    add_scores,
    count_statements,
    generate_tree,
    insert_project,
    insert_tree,
)

from pipeline.reads import LoadedProject, Node, ProjectNode, Rubric, TaxonomyReads

PROJECT = "proj-a"
SMALL = "proj-small"
BARE = "proj-bare"  # a project without nodes or rubrics
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
NODE_FIELDS = ("parent_id", "label", "content", "status", "rubric_score", "ucb_score", "metadata")


class World:
    """What was written, and the answers computed from it in Python."""

    def __init__(self, tree: GeneratedTree, small: GeneratedTree) -> None:
        self.trees = {PROJECT: tree, SMALL: small}
        # (project, rubric_id, version) -> (created_at, principle names in position order)
        self.rubrics: dict[tuple[str, str, int], tuple[dt.datetime, list[str]]] = {}
        # (project, rubric_id, version) -> {node_id: {principle: score}}
        self.scores: dict[tuple[str, str, int], dict[str, dict[str, float]]] = {}

    def versions(self, project: str, rubric_id: str | None = None) -> list[tuple[str, int]]:
        """(rubric_id, version) of the project's rubric versions, in the reads' order."""
        return sorted((r, v) for p, r, v in self.rubrics if p == project and rubric_id in (None, r))

    def latest(self, project: str, rubric_id: str | None = None) -> tuple[str, int] | None:
        """The rule of ``latest_rubric``, computed independently."""
        highest: dict[str, int] = {}
        for r, v in self.versions(project, rubric_id):
            highest[r] = max(v, highest.get(r, v))
        if not highest:
            return None
        newest = max(self.rubrics[(project, *rv)][0] for rv in highest.items())
        return min(rv for rv in highest.items() if self.rubrics[(project, *rv)][0] == newest)

    def node_scores(self, project: str) -> dict[str, dict[str, float]]:
        """Each node's principle scores for the project's latest rubric."""
        latest = self.latest(project)
        return {} if latest is None else self.scores.get((project, *latest), {})


@pytest.fixture(scope="module")
async def world(module_database_url: str) -> World:
    """Two projects with trees, rubric versions created in a shuffled order with tied creation
    times, and principle scores for every version; a third project with nothing."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(module_database_url)
    data = World(generate_tree(seed=11, size=1500), generate_tree(seed=12, size=10))
    rng = random.Random(5)
    try:
        for project, tree in data.trees.items():
            await insert_tree(engine, project, tree)
        async with engine.begin() as conn:
            await insert_project(conn, BARE)
        for project, tree in data.trees.items():
            for rubric_id in ("accuracy", "quality", "style"):
                for version in rng.sample(range(1, 9), 3):
                    names = rng.sample(
                        ["clear", "true", "kind", "brief", "deep"], rng.randint(1, 4)
                    )
                    ids = await add_rubric(engine, project, version, names, rubric_id=rubric_id)
                    # Few distinct creation times, so ties between rubrics are common.
                    created = T0 + dt.timedelta(days=rng.randint(0, 3))
                    async with engine.begin() as conn:
                        await conn.execute(
                            text(
                                "UPDATE rubrics SET created_at = :at WHERE project_id = :p "
                                "AND rubric_id = :r AND version = :v"
                            ),
                            {"at": created, "p": project, "r": rubric_id, "v": version},
                        )
                    data.rubrics[(project, rubric_id, version)] = (created, names[::-1])
                    scores = {
                        (node, name): rng.randint(0, 100) / 8
                        for node in rng.sample(list(tree.nodes), len(tree.nodes) // 2)
                        for name in names
                        if rng.random() < 0.7
                    }
                    await add_scores(engine, project, (rubric_id, version), ids, scores)
                    by_node = data.scores.setdefault((project, rubric_id, version), {})
                    for (node, name), score in scores.items():
                        by_node.setdefault(node, {})[name] = score
    finally:
        await engine.dispose()
    return data


@pytest.fixture
async def reads(module_database_url: str) -> Any:
    """A repository over an engine of the module's database."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(module_database_url)
    yield TaxonomyReads(engine)
    await engine.dispose()


def check_rubric(world: World, rubric: Rubric, project: str) -> None:
    """The rubric read model matches what was written."""
    created, names = world.rubrics[(project, rubric.rubric_id, rubric.version)]
    assert rubric.created_at == created
    assert [p.name for p in rubric.principles] == names
    highest = max(v for r, v in world.versions(project, rubric.rubric_id))
    assert rubric.latest is (rubric.version == highest)


def check_nodes(world: World, project: str, nodes: list[ProjectNode]) -> None:
    """Every node of the project, in node_id order, with its fields and latest scores."""
    tree = world.trees.get(project)
    expected = sorted(tree.nodes) if tree else []
    assert [n.node.node_id for n in nodes] == expected
    scores = world.node_scores(project)
    for n in nodes:
        assert tree is not None
        written = tree.nodes[n.node.node_id]
        assert {f: getattr(n.node, f) for f in NODE_FIELDS} == {
            f: getattr(written, f) for f in NODE_FIELDS
        }
        assert n.principle_scores == scores.get(n.node.node_id, {})


@pytest.mark.parametrize("project", [PROJECT, SMALL, BARE])
async def test_load_project_is_the_project_its_rubrics_and_its_scored_tree(
    world: World, reads: TaxonomyReads, project: str
) -> None:
    loaded = await reads.load_project(project)
    assert isinstance(loaded, LoadedProject)
    assert (loaded.project.project_id, loaded.project.name) == (project, project)
    assert [(r.rubric_id, r.version) for r in loaded.rubrics] == world.versions(project)
    for rubric in loaded.rubrics:
        check_rubric(world, rubric, project)
    latest = world.latest(project)
    got = loaded.latest_rubric
    assert (None if got is None else (got.rubric_id, got.version)) == latest
    check_nodes(world, project, list(loaded.nodes))
    tree = world.trees.get(project)
    assert [n.node.node_id for n in loaded.roots] == sorted(tree.roots if tree else [])
    children = loaded.children_of()
    for node_id, kids in tree.children.items() if tree else []:
        assert [k.node.node_id for k in children.get(node_id, ())] == sorted(kids)
    streamed = [n async for n in reads.stream_project(project, batch_size=64)]
    assert streamed == list(loaded.nodes)


async def test_load_project_takes_three_statements_whatever_the_trees_size(
    world: World, reads: TaxonomyReads
) -> None:
    counts = []
    for project in (PROJECT, SMALL, BARE):
        with count_statements(reads._source) as statements:
            await reads.load_project(project)
        counts.append(len(statements))
    assert counts == [3, 3, 3]
    with count_statements(reads._source) as statements:
        assert await reads.load_project("no-such-project") is None
    assert len(statements) == 1


async def test_rubric_reads_follow_the_latest_rule(world: World, reads: TaxonomyReads) -> None:
    for project in (PROJECT, SMALL, BARE, "no-such-project"):
        for rubric_id in (None, "accuracy", "quality", "style", "none-such"):
            versions = await reads.rubric_versions(project, rubric_id)
            assert [(r.rubric_id, r.version) for r in versions] == world.versions(
                project, rubric_id
            )
            for rubric in versions:
                check_rubric(world, rubric, project)
                single = await reads.rubric(project, rubric.rubric_id, rubric.version)
                assert single == rubric  # the latest flag included
            latest = await reads.latest_rubric(project, rubric_id)
            expected = world.latest(project, rubric_id)
            assert (None if latest is None else (latest.rubric_id, latest.version)) == expected


async def test_projects_pages_and_roots(world: World, reads: TaxonomyReads) -> None:
    seen: list[str] = []
    page = await reads.projects(limit=2)
    while True:
        seen.extend(p.project_id for p in page.items)
        if page.next_cursor is None:
            break
        page = await reads.projects(limit=2, after=page.next_cursor)
    assert seen == sorted([PROJECT, SMALL, BARE])
    assert (await reads.project(SMALL)) == (await reads.load_project(SMALL)).project  # type: ignore[union-attr]
    assert await reads.project("no-such-project") is None
    for project, tree in world.trees.items():
        roots = await reads.roots(project)
        assert [r.node_id for r in roots] == sorted(tree.roots)
        assert all(isinstance(r, Node) and r.parent_id is None for r in roots)
    assert await reads.roots(BARE) == []
    with pytest.raises(ValueError):
        await reads.projects(limit=0)


async def test_a_session_streams_and_loads_in_its_own_transaction(
    world: World, module_database_url: str
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(module_database_url)
    try:
        async with AsyncSession(engine) as session:
            await session.execute(
                text("INSERT INTO nodes (project_id, node_id, label) VALUES (:p, 'zz-new', 'new')"),
                {"p": SMALL},
            )
            reads = TaxonomyReads(session)
            loaded = await reads.load_project(SMALL)
            assert loaded is not None and loaded.nodes[-1].node.node_id == "zz-new"
            streamed = [n.node.node_id async for n in reads.stream_project(SMALL)]
            assert streamed[-1] == "zz-new" and len(streamed) == len(loaded.nodes)
            await session.rollback()
    finally:
        await engine.dispose()
