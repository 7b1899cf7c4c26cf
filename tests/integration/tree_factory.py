"""Test data for the read side: random trees with their answers computed in Python, and helpers.

The trees are written with plain Core inserts, never through the write path, so the read side is
checked against data it had no hand in shaping.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline.schema import metadata

NODES = metadata.tables["nodes"]
PROJECTS = metadata.tables["projects"]
RUBRICS = metadata.tables["rubrics"]
PRINCIPLES = metadata.tables["rubric_principles"]
SCORES = metadata.tables["principle_scores"]
BRANCH_STATS = metadata.tables["branch_stats"]
STATUSES = ("alive", "expanded", "pruned", "terminal", "failed")


@dataclass(frozen=True)
class GenNode:
    """One generated node."""

    node_id: str
    parent_id: str | None
    label: str
    content: str | None
    status: str
    rubric_score: float | None
    ucb_score: float | None
    metadata: dict[str, Any]


@dataclass
class GeneratedTree:
    """A generated forest, its nodes in insertion order (parents before children)."""

    nodes: dict[str, GenNode]
    children: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node in self.nodes.values():
            self.children.setdefault(node.node_id, [])
            if node.parent_id is not None:
                self.children.setdefault(node.parent_id, []).append(node.node_id)

    @property
    def roots(self) -> list[str]:
        """The nodes without a parent."""
        return [n.node_id for n in self.nodes.values() if n.parent_id is None]

    def subtree(self, root: str, max_depth: int | None = None) -> list[tuple[str, int]]:
        """(node_id, depth) of the subtree, ordered by depth then node_id."""
        found: list[tuple[str, int]] = []
        frontier = [(root, 0)]
        while frontier:
            node_id, depth = frontier.pop()
            found.append((node_id, depth))
            if max_depth is None or depth < max_depth:
                frontier.extend((child, depth + 1) for child in self.children[node_id])
        return sorted(found, key=lambda item: (item[1], item[0]))

    def path(self, node_id: str) -> list[str]:
        """Root .. node, both included."""
        path = [node_id]
        while (parent := self.nodes[path[-1]].parent_id) is not None:
            path.append(parent)
        return path[::-1]

    def depth(self, node_id: str) -> int:
        """How many edges below its root the node is."""
        return len(self.path(node_id)) - 1

    def alive_ids(self) -> list[str]:
        """Alive node ids in node_id order."""
        return sorted(n.node_id for n in self.nodes.values() if n.status == "alive")

    def top_by_ucb(self, k: int, *, alive_only: bool) -> list[str]:
        """Node ids by UCB score descending, nulls last, ties by node_id."""
        candidates = [n for n in self.nodes.values() if not alive_only or n.status == "alive"]
        candidates.sort(
            key=lambda n: (n.ucb_score is None, -(n.ucb_score or 0.0), n.node_id),
        )
        return [n.node_id for n in candidates[:k]]

    def stats(self, root: str) -> dict[str, Any]:
        """The branch statistics of the subtree under ``root``."""
        members = self.subtree(root)
        nodes = [self.nodes[node_id] for node_id, _ in members]
        scores = [n.rubric_score for n in nodes if n.rubric_score is not None]
        return {
            "node_count": len(nodes),
            "alive_count": sum(n.status == "alive" for n in nodes),
            "scored_count": len(scores),
            # Scores are multiples of 1/64, so every partial sum is exact in binary floating
            # point and the mean equals PostgreSQL's avg() exactly, in any summation order.
            "mean_score": sum(scores) / len(scores) if scores else None,
            "max_score": max(scores) if scores else None,
            "max_depth": max(depth for _, depth in members),
        }


def generate_tree(
    seed: int, size: int, *, roots: int = 3, ids: Sequence[str] | None = None
) -> GeneratedTree:
    """A random forest of ``size`` nodes; ``ids`` (if given) supplies the node ids to use."""
    rng = random.Random(seed)
    if ids is None:
        ids = [f"n{number:06d}" for number in rng.sample(range(1_000_000), size)]
    assert len(ids) >= size
    order: list[str] = []
    nodes: dict[str, GenNode] = {}
    for index, node_id in enumerate(ids[:size]):
        parent: str | None = None
        if index >= roots:
            # Half the time attach to a recent node, which makes deep chains as well as bushes.
            pool = order[-40:] if rng.random() < 0.5 else order
            parent = rng.choice(pool)
        nodes[node_id] = GenNode(
            node_id=node_id,
            parent_id=parent,
            label=f"label {seed}/{index}",
            content=None if rng.random() < 0.3 else f"content of {node_id}",
            status=rng.choice(STATUSES),
            rubric_score=None if rng.random() < 0.2 else rng.randint(0, 640) / 64,
            # Few distinct values, so ties (broken by node_id) are common.
            ucb_score=None if rng.random() < 0.15 else rng.randint(0, 200) / 10,
            metadata={"seed": seed, "index": index},
        )
        order.append(node_id)
    return GeneratedTree(nodes)


async def insert_project(conn: AsyncConnection, project_id: str) -> None:
    """A bare project row."""
    await conn.execute(insert(PROJECTS), [{"project_id": project_id, "name": project_id}])


async def insert_tree(engine: AsyncEngine, project_id: str, tree: GeneratedTree) -> None:
    """The project and every node of the tree, committed."""
    rows = [
        {
            "project_id": project_id,
            "node_id": n.node_id,
            "parent_id": n.parent_id,
            "label": n.label,
            "content": n.content,
            "status": n.status,
            "rubric_score": n.rubric_score,
            "ucb_score": n.ucb_score,
            "metadata": n.metadata,
        }
        for n in tree.nodes.values()
    ]
    async with engine.begin() as conn:
        await insert_project(conn, project_id)
        await conn.execute(insert(NODES), rows)


def sample_roots(tree: GeneratedTree) -> list[str]:
    """Subtree roots of every shape: the forest's roots, inner nodes, deep nodes and leaves."""
    rng = random.Random(3)
    inner = [node for node, kids in tree.children.items() if kids]
    leaves = [node for node, kids in tree.children.items() if not kids]
    deepest = max(tree.nodes, key=tree.depth)
    return [*tree.roots, *rng.sample(inner, 8), *rng.sample(leaves, 3), deepest]


async def add_rubric(
    engine: AsyncEngine, project_id: str, version: int, names: list[str], *, rubric_id: str
) -> dict[str, int]:
    """A rubric version with principles named ``names`` (later names get lower positions);
    returns the principles' ids by name."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(RUBRICS),
            [{"project_id": project_id, "rubric_id": rubric_id, "version": version}],
        )
        rows = [
            {
                "project_id": project_id,
                "rubric_id": rubric_id,
                "rubric_version": version,
                "name": name,
                "description": f"about {name}",
                "weight": 1.0 + index,
                "position": len(names) - index,
            }
            for index, name in enumerate(names)
        ]
        result = await conn.execute(
            insert(PRINCIPLES).returning(PRINCIPLES.c.name, PRINCIPLES.c.principle_id), rows
        )
        return {row.name: row.principle_id for row in result}


async def add_scores(
    engine: AsyncEngine,
    project_id: str,
    rubric: tuple[str, int],
    ids: dict[str, int],
    scores: dict[tuple[str, str], float],
) -> None:
    """Principle scores of ``rubric`` (id, version), keyed by (node_id, principle name)."""
    rubric_id, version = rubric
    rows = [
        {
            "project_id": project_id,
            "node_id": node_id,
            "principle_id": ids[name],
            "rubric_id": rubric_id,
            "rubric_version": version,
            "score": score,
        }
        for (node_id, name), score in scores.items()
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(SCORES), rows)


async def stored_stats(engine: AsyncEngine, project_id: str, node_id: str) -> dict[str, Any] | None:
    """The committed ``branch_stats`` row of a node, if any."""
    statement = select(BRANCH_STATS).where(
        BRANCH_STATS.c.project_id == project_id, BRANCH_STATS.c.node_id == node_id
    )
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
    return dict(row) if row is not None else None


@contextmanager
def captured(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    """Collect the (statement, parameters) pairs sent to the database while the block runs."""
    sent: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        sent.append((args[2], args[3]))  # (conn, cursor, statement, parameters, context, many)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements sent while the block runs (the list is filled when the block ends)."""
    statements: list[str] = []
    with captured(engine) as sent:
        yield statements
    statements.extend(statement for statement, _ in sent)


async def insert_rows(engine: AsyncEngine, table: Any, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` in one transaction."""
    async with engine.begin() as conn:
        await conn.execute(insert(table), rows)
