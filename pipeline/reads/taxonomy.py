"""The taxonomy read repository: plain SELECTs on the schema's tables, returning read models.

Every read issues a constant number of statements whatever the size of its answer (one, except
where a method's docstring says otherwise). Tree walks are recursive CTEs; the tree is acyclic by
construction (a node is inserted only under an existing parent and never re-parented), so the
CTEs need no cycle guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import (
    CTE,
    ColumnElement,
    Executable,
    Integer,
    String,
    any_,
    bindparam,
    func,
    literal,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.reads.base import Source
from pipeline.reads.cache import PrincipleScoreCache, RubricKey
from pipeline.reads.models import (
    BranchStats,
    LabeledSample,
    Node,
    NodeAtDepth,
    Rubric,
    from_row,
)
from pipeline.reads.projects import ProjectReads, rubrics_of, rubrics_select
from pipeline.schema import metadata
from pipeline.schema.taxonomy import branch_stats_lock_key
from pipeline.settings import get_settings

NODES = metadata.tables["nodes"]
RUBRICS = metadata.tables["rubrics"]
PRINCIPLES = metadata.tables["rubric_principles"]
SCORES = metadata.tables["principle_scores"]
SAMPLES = metadata.tables["labeled_samples"]
BRANCH_STATS = metadata.tables["branch_stats"]

# The columns read are the read model's fields, which are named after them.
NODE_FIELDS = tuple(f.name for f in fields(Node))
_STATS_INPUT_FIELDS = ("node_id", "status", "rubric_score")

# The status is inlined rather than bound so the planner can match the predicate of the partial
# index ix_nodes_alive_ucb even under a generic plan of a prepared statement.
_ALIVE: ColumnElement[str] = literal_column("'alive'", String)

_LOCK_BRANCH_STATS = text(
    "SELECT pg_advisory_xact_lock(" + branch_stats_lock_key(":project_id") + ")"
).bindparams(bindparam("project_id", type_=String))


class TaxonomyReads(ProjectReads):
    """Reads of one database's taxonomy tables, all scoped by project.

    ``source`` is an engine (each read checks out a connection of its own; point it at a replica
    if you like) or a session (reads run in the session's transaction, see its own uncommitted
    writes, and never commit or write anything). ``principle_cache`` should be one instance shared
    by the process; without one, the repository makes a private cache sized by the settings.

    Branch statistics are cached in the ``branch_stats`` table. With an engine and
    ``store_branch_stats`` (the default), a miss is computed and stored in a transaction of its
    own; pass ``store_branch_stats=False`` for a read-only replica. With a session, a stored row is
    still served, but a miss is computed in the session's transaction and not stored: storing
    needs a transaction that starts after the advisory lock is taken and commits at once, and the
    repository must neither commit the caller's transaction nor hold a lock that blocks every
    writer of the project until the caller finishes.
    """

    query_prefix = "taxonomy"

    def __init__(
        self,
        source: Source,
        *,
        principle_cache: PrincipleScoreCache | None = None,
        store_branch_stats: bool = True,
    ) -> None:
        super().__init__(source)
        self.principle_cache = (
            principle_cache
            if principle_cache is not None
            else PrincipleScoreCache.from_settings(get_settings())
        )
        self._store_branch_stats = store_branch_stats

    async def node(self, project_id: str, node_id: str) -> Node | None:
        """The node, or None if the project has no such node."""
        rows = await self._rows(
            _select_nodes().where(NODES.c.project_id == project_id, NODES.c.node_id == node_id)
        )
        return from_row(Node, rows[0]) if rows else None

    async def children(self, project_id: str, node_id: str) -> list[Node]:
        """The node's children, ordered by node_id (empty for a leaf or an unknown node)."""
        statement = (
            _select_nodes()
            .where(NODES.c.project_id == project_id, NODES.c.parent_id == node_id)
            .order_by(NODES.c.node_id)
        )
        return [from_row(Node, row) for row in await self._rows(statement)]

    async def subtree(
        self, project_id: str, node_id: str, max_depth: int | None = None
    ) -> list[NodeAtDepth]:
        """The node and its descendants down to ``max_depth`` levels below it (all if None).

        Ordered breadth-first: by depth, then node_id. The root is at depth 0; ``max_depth=0``
        returns the root alone. Empty if the node does not exist.
        """
        if max_depth is not None and max_depth < 0:
            raise ValueError("max_depth must be >= 0")
        tree = _subtree_cte(project_id, node_id, NODE_FIELDS, max_depth)
        statement = select(tree).order_by(tree.c.depth, tree.c.node_id)
        return [
            NodeAtDepth(from_row(Node, row), row["depth"]) for row in await self._rows(statement)
        ]

    async def ancestors(self, project_id: str, node_id: str) -> list[Node]:
        """The node's ancestors from the root down to its parent; the node itself is excluded.

        Empty for a root and for an unknown node.
        """
        return await self._lineage(project_id, node_id, include_node=False)

    async def path(self, project_id: str, node_id: str) -> list[Node]:
        """The path from the root down to the node, both included; empty for an unknown node."""
        return await self._lineage(project_id, node_id, include_node=True)

    async def _lineage(self, project_id: str, node_id: str, *, include_node: bool) -> list[Node]:
        start = (
            select(*_node_columns(NODES), literal(0, Integer).label("height"))
            .where(NODES.c.project_id == project_id, NODES.c.node_id == node_id)
            .cte("lineage", recursive=True)
        )
        parent = NODES.alias("parent")
        lineage = start.union_all(
            select(*_node_columns(parent), (start.c.height + 1).label("height")).where(
                parent.c.project_id == project_id, parent.c.node_id == start.c.parent_id
            )
        )
        statement = select(lineage).order_by(lineage.c.height.desc())
        if not include_node:
            statement = statement.where(lineage.c.height > 0)
        return [from_row(Node, row) for row in await self._rows(statement)]

    async def alive_nodes(
        self, project_id: str, *, limit: int = 1000, after_node_id: str | None = None
    ) -> list[Node]:
        """One page of the project's alive nodes, ordered by node_id (keyset pagination).

        Pass the last node_id of a page as ``after_node_id`` to get the next one. Pages follow the
        immutable node_id rather than the UCB score, so a node alive throughout a walk is seen
        exactly once even while scores change; for the best alive nodes, use :meth:`top_by_ucb`.
        """
        if limit < 1:
            raise ValueError("limit must be >= 1")
        statement = (
            _select_nodes()
            .where(NODES.c.project_id == project_id, NODES.c.status == _ALIVE)
            .order_by(NODES.c.node_id)
            .limit(limit)
        )
        if after_node_id is not None:
            statement = statement.where(NODES.c.node_id > after_node_id)
        return [from_row(Node, row) for row in await self._rows(statement)]

    async def top_by_ucb(self, project_id: str, k: int, *, alive_only: bool = True) -> list[Node]:
        """The ``k`` nodes of highest UCB score (nulls last, ties by node_id), alive ones only
        unless ``alive_only`` is False."""
        if k < 0:
            raise ValueError("k must be >= 0")
        statement = (
            _select_nodes()
            .where(NODES.c.project_id == project_id)
            .order_by(NODES.c.ucb_score.desc().nulls_last(), NODES.c.node_id)
            .limit(k)
        )
        if alive_only:
            statement = statement.where(NODES.c.status == _ALIVE)
        return [from_row(Node, row) for row in await self._rows(statement)]

    async def branch_stats(self, project_id: str, node_id: str) -> BranchStats | None:
        """Statistics of the subtree under the node, or None if the node does not exist.

        A stored ``branch_stats`` row is served as is (one statement): the write path deletes the
        rows of every ancestor of a node it changes, in the transaction of the change, so a row
        that is visible is current. On a miss, with an engine, the statistics are computed and
        stored in one READ COMMITTED transaction that first takes the project's branch-stats
        advisory lock exclusively (three statements in all); see the class docstring for sessions.
        """
        stored = select(BRANCH_STATS).where(
            BRANCH_STATS.c.project_id == project_id, BRANCH_STATS.c.node_id == node_id
        )
        if self._store_branch_stats and isinstance(self._source, AsyncEngine):
            return await self._cached_branch_stats(self._source, project_id, node_id, stored)
        async with self._connection() as conn:
            row = (await conn.execute(stored)).mappings().first()
            if row is None:
                row = (await conn.execute(_stats_select(project_id, node_id))).mappings().first()
        return from_row(BranchStats, row) if row is not None else None

    async def _cached_branch_stats(
        self, engine: AsyncEngine, project_id: str, node_id: str, stored: Executable
    ) -> BranchStats | None:
        async with engine.connect() as conn:
            # Each statement needs a fresh snapshot: the computation must see every writer that
            # held the lock before us, which a REPEATABLE READ snapshot taken earlier would miss.
            await conn.execution_options(isolation_level="READ COMMITTED")
            async with conn.begin():
                row = (await conn.execute(stored)).mappings().first()
                if row is None:
                    await conn.execute(_LOCK_BRANCH_STATS, {"project_id": project_id})
                    upsert = _upsert_stats(project_id, node_id)
                    row = (await conn.execute(upsert)).mappings().first()
        return from_row(BranchStats, row) if row is not None else None

    async def principle_scores(
        self, project_id: str, rubric_id: str, rubric_version: int, node_ids: Sequence[str]
    ) -> dict[str, dict[str, float]]:
        """Each node's scores by principle name for one rubric version, through the cache.

        Every requested node is a key; a node without scores maps to an empty dict, a node scored
        on only some principles to those. At most two statements: the version's principle names
        (skipped once cached) and the scores of every node the cache could not answer.
        """
        wanted = list(dict.fromkeys(node_ids))
        if not wanted:
            return {}
        rubric = (project_id, rubric_id, rubric_version)
        names = await self._principle_names(rubric)
        if not names:
            return {node: {} for node in wanted}
        found, missing = self.principle_cache.lookup(rubric, wanted)
        if missing:
            fetched = await self._fetch_principle_scores(rubric, missing)
            for node in missing:
                found[node] = fetched.get(node, {})
                self.principle_cache.store_scores((*rubric, node), found[node], names)
        return {node: found[node] for node in wanted}

    async def _principle_names(self, rubric: RubricKey) -> frozenset[str]:
        names = self.principle_cache.principle_names(rubric)
        if names is None:
            rows = await self._rows(select(PRINCIPLES.c.name).where(*_principle_version(rubric)))
            names = frozenset(row["name"] for row in rows)
            self.principle_cache.store_principle_names(rubric, names)
        return names

    async def _fetch_principle_scores(
        self, rubric: RubricKey, node_ids: list[str]
    ) -> dict[str, dict[str, float]]:
        project_id, rubric_id, rubric_version = rubric
        statement = (
            select(SCORES.c.node_id, PRINCIPLES.c.name, SCORES.c.score)
            .join_from(SCORES, PRINCIPLES, PRINCIPLES.c.principle_id == SCORES.c.principle_id)
            .where(
                SCORES.c.project_id == project_id,
                SCORES.c.rubric_id == rubric_id,
                SCORES.c.rubric_version == rubric_version,
                # One array parameter, so the statement text is the same for any number of nodes.
                SCORES.c.node_id == any_(bindparam("node_ids", node_ids, type_=ARRAY(String))),
                *_principle_version(rubric),
            )
        )
        scores: dict[str, dict[str, float]] = {}
        for row in await self._rows(statement):
            scores.setdefault(row["node_id"], {})[row["name"]] = row["score"]
        return scores

    async def rubric(self, project_id: str, rubric_id: str, version: int) -> Rubric | None:
        """A rubric version with its principles (one statement), or None if it does not exist."""
        found = rubrics_of(await self._rows(rubrics_select(project_id, rubric_id, version)))
        return found[0] if found else None

    async def labeled_samples(self, project_id: str, node_id: str) -> list[LabeledSample]:
        """The node's labeled samples, oldest first (ties by sample_id)."""
        statement = (
            select(SAMPLES)
            .where(SAMPLES.c.project_id == project_id, SAMPLES.c.node_id == node_id)
            .order_by(SAMPLES.c.created_at, SAMPLES.c.sample_id)
        )
        return [from_row(LabeledSample, row) for row in await self._rows(statement)]


def _node_columns(table: Any, names: Sequence[str] = NODE_FIELDS) -> list[Any]:
    return [table.c[name] for name in names]


def _select_nodes() -> Any:
    return select(*_node_columns(NODES))


def _principle_version(rubric: RubricKey) -> list[ColumnElement[bool]]:
    project_id, rubric_id, rubric_version = rubric
    return [
        PRINCIPLES.c.project_id == project_id,
        PRINCIPLES.c.rubric_id == rubric_id,
        PRINCIPLES.c.rubric_version == rubric_version,
    ]


def _subtree_cte(
    project_id: str, node_id: str, names: Sequence[str], max_depth: int | None = None
) -> CTE:
    """The node and its descendants, with the given node columns and a ``depth`` column."""
    root = (
        select(*_node_columns(NODES, names), literal(0, Integer).label("depth"))
        .where(NODES.c.project_id == project_id, NODES.c.node_id == node_id)
        .cte("subtree", recursive=True)
    )
    child = NODES.alias("child")
    step = select(*_node_columns(child, names), (root.c.depth + 1).label("depth")).where(
        child.c.project_id == project_id, child.c.parent_id == root.c.node_id
    )
    if max_depth is not None:
        # Bounding the recursive term stops the walk there instead of filtering afterwards.
        step = step.where(root.c.depth < max_depth)
    return root.union_all(step)


def _stats_select(project_id: str, node_id: str) -> Any:
    """One row of branch statistics, columns named as in ``branch_stats``; none if no such node."""
    tree = _subtree_cte(project_id, node_id, _STATS_INPUT_FIELDS)
    return select(
        literal(project_id, String).label("project_id"),
        literal(node_id, String).label("node_id"),
        func.count().label("node_count"),
        func.count().filter(tree.c.status == _ALIVE).label("alive_count"),
        func.count(tree.c.rubric_score).label("scored_count"),
        func.avg(tree.c.rubric_score).label("mean_score"),
        func.max(tree.c.rubric_score).label("max_score"),
        func.max(tree.c.depth).label("max_depth"),
        func.now().label("computed_at"),
    ).having(func.count() > 0)


def _upsert_stats(project_id: str, node_id: str) -> Executable:
    stats = _stats_select(project_id, node_id)
    names = [column.name for column in stats.selected_columns]
    insert = pg_insert(BRANCH_STATS).from_select(names, stats)
    return insert.on_conflict_do_update(
        index_elements=[BRANCH_STATS.c.project_id, BRANCH_STATS.c.node_id],
        set_={
            name: insert.excluded[name] for name in names if name not in ("project_id", "node_id")
        },
    ).returning(*BRANCH_STATS.c)
