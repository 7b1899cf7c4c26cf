"""Reads of whole projects: the projects, their rubrics and versions, their trees.

``load_project`` reads a project, every version of its rubrics and its whole tree with the
latest rubric's principle scores in three statements whatever the tree's size, all in one
snapshot; ``stream_project`` yields the same nodes through a server-side cursor, for trees too
large to hold. :class:`pipeline.reads.TaxonomyReads` derives from :class:`ProjectReads`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Select, func, select, tuple_

from pipeline.reads.base import ReadRepository, check_limit, fetch, page_of, stream
from pipeline.reads.models import (
    LoadedProject,
    Node,
    Page,
    Principle,
    Project,
    ProjectNode,
    Rubric,
    from_row,
)
from pipeline.schema import metadata

PROJECTS = metadata.tables["projects"]
NODES = metadata.tables["nodes"]
RUBRICS = metadata.tables["rubrics"]
PRINCIPLES = metadata.tables["rubric_principles"]
SCORES = metadata.tables["principle_scores"]

_NODE_COLUMNS = [NODES.c[f.name] for f in fields(Node)]
_PRINCIPLE_COLUMNS = [PRINCIPLES.c[f.name] for f in fields(Principle)]


class ProjectReads(ReadRepository):
    """Reads of projects and of everything a project holds, scoped by project.

    ``source`` is an engine (each read checks out a connection of its own) or a session (reads
    run in the session's transaction). Nothing here writes or commits.
    """

    query_prefix = "projects"

    async def projects(self, limit: int = 100, after: str | None = None) -> Page[Project, str]:
        """One page of every project, by project_id; pass ``next_cursor`` as ``after``."""
        check_limit(limit)
        statement = select(PROJECTS).order_by(PROJECTS.c.project_id).limit(limit + 1)
        if after is not None:
            statement = statement.where(PROJECTS.c.project_id > after)
        items = [from_row(Project, row) for row in await self._rows(statement)]
        return page_of(items, limit, lambda last: last.project_id)

    async def project(self, project_id: str) -> Project | None:
        """The project, or None if there is no such project."""
        rows = await self._rows(select(PROJECTS).where(PROJECTS.c.project_id == project_id))
        return from_row(Project, rows[0]) if rows else None

    async def rubric_versions(self, project_id: str, rubric_id: str | None = None) -> list[Rubric]:
        """Every version of the project's rubrics (or of one), by rubric_id then version, each
        with its principles and marked ``latest`` if it is its rubric's highest version.

        One statement.
        """
        return rubrics_of(await self._rows(rubrics_select(project_id, rubric_id)))

    async def latest_rubric(self, project_id: str, rubric_id: str | None = None) -> Rubric | None:
        """With ``rubric_id``, that rubric's highest version. Without, the project's latest
        rubric: of each rubric's highest version, the one created last (ties by rubric_id, the
        first); None if the project has no rubric. One statement."""
        return latest_of(await self.rubric_versions(project_id, rubric_id))

    async def roots(self, project_id: str) -> list[Node]:
        """The project's nodes without a parent, by node_id."""
        statement = (
            select(*_NODE_COLUMNS)
            .where(NODES.c.project_id == project_id, NODES.c.parent_id.is_(None))
            .order_by(NODES.c.node_id)
        )
        return [from_row(Node, row) for row in await self._rows(statement)]

    async def load_project(self, project_id: str) -> LoadedProject | None:
        """The project with its rubrics and its whole tree, or None if there is no such project.

        Three statements however large the tree (the project; its rubrics with their principles;
        its nodes with their principle scores for the latest rubric, see :meth:`latest_rubric`),
        all in one snapshot: with an engine, a REPEATABLE READ, READ ONLY transaction. Nodes come
        by node_id. For a tree too large to hold, :meth:`stream_project`.
        """
        async with self._snapshot() as conn:
            found = await fetch(conn, select(PROJECTS).where(PROJECTS.c.project_id == project_id))
            if not found:
                return None
            rubrics = rubrics_of(await fetch(conn, rubrics_select(project_id)))
            latest = latest_of(rubrics)
            nodes = await fetch(conn, _scored_nodes(project_id, latest))
        return LoadedProject(
            project=from_row(Project, found[0]),
            rubrics=tuple(rubrics),
            latest_rubric=latest,
            nodes=tuple(_project_node(row) for row in nodes),
        )

    async def stream_project(
        self, project_id: str, *, batch_size: int = 1000
    ) -> AsyncIterator[ProjectNode]:
        """The nodes :meth:`load_project` returns, in its order, fetched ``batch_size`` at a
        time through a server-side cursor, so memory stays bounded whatever the tree's size.

        Two statements (the rubrics, to know the latest, then the nodes), in one snapshot.
        Nothing for an unknown project.
        """
        check_limit(batch_size)
        async with self._snapshot() as conn:
            latest = latest_of(rubrics_of(await fetch(conn, rubrics_select(project_id))))
            async for row in stream(conn, _scored_nodes(project_id, latest), batch_size):
                yield _project_node(row)


def rubrics_select(
    project_id: str, rubric_id: str | None = None, version: int | None = None
) -> Select[Any]:
    """Rubric versions joined with their principles (one row per principle, or one row with
    null principle columns for a version without any), each with its ``latest`` flag."""
    newest = RUBRICS.alias("newest")
    highest = (
        select(func.max(newest.c.version))
        .where(newest.c.project_id == RUBRICS.c.project_id)
        .where(newest.c.rubric_id == RUBRICS.c.rubric_id)
        .scalar_subquery()
    )
    statement = (
        select(
            RUBRICS.c.project_id,
            RUBRICS.c.rubric_id,
            RUBRICS.c.version,
            RUBRICS.c.created_at,
            (RUBRICS.c.version == highest).label("latest"),
            *_PRINCIPLE_COLUMNS,
        )
        .outerjoin_from(
            RUBRICS,
            PRINCIPLES,
            tuple_(PRINCIPLES.c.project_id, PRINCIPLES.c.rubric_id, PRINCIPLES.c.rubric_version)
            == tuple_(RUBRICS.c.project_id, RUBRICS.c.rubric_id, RUBRICS.c.version),
        )
        .where(RUBRICS.c.project_id == project_id)
        .order_by(
            RUBRICS.c.rubric_id, RUBRICS.c.version, PRINCIPLES.c.position, PRINCIPLES.c.principle_id
        )
    )
    if rubric_id is not None:
        statement = statement.where(RUBRICS.c.rubric_id == rubric_id)
    if version is not None:
        statement = statement.where(RUBRICS.c.version == version)
    return statement


def rubrics_of(rows: Iterable[RowMapping]) -> list[Rubric]:
    """Rubric read models of :func:`rubrics_select`'s rows, in their order."""
    grouped: dict[tuple[str, int], tuple[RowMapping, list[Principle]]] = {}
    for row in rows:
        _, principles = grouped.setdefault((row["rubric_id"], row["version"]), (row, []))
        if row["principle_id"] is not None:
            principles.append(from_row(Principle, row))
    return [
        Rubric(
            row["project_id"],
            row["rubric_id"],
            row["version"],
            row["created_at"],
            tuple(principles),
            bool(row["latest"]),
        )
        for row, principles in grouped.values()
    ]


def latest_of(rubrics: Sequence[Rubric]) -> Rubric | None:
    """Of the rubrics' latest versions, the one created last (ties: the first rubric_id)."""
    candidates = [r for r in rubrics if r.latest]
    if not candidates:
        return None
    newest = max(r.created_at for r in candidates)
    return min((r for r in candidates if r.created_at == newest), key=lambda r: r.rubric_id)


def _scored_nodes(project_id: str, rubric: Rubric | None) -> Select[Any]:
    """Every node of the project by node_id, with its principle names and scores for
    ``rubric`` as two arrays (null for a node without scores, or without a rubric)."""
    statement = select(*_NODE_COLUMNS).where(NODES.c.project_id == project_id)
    if rubric is None:
        return statement.order_by(NODES.c.node_id)
    scores = (
        select(
            SCORES.c.node_id,
            func.array_agg(PRINCIPLES.c.name).label("principles"),
            func.array_agg(SCORES.c.score).label("scores"),
        )
        .join_from(SCORES, PRINCIPLES, PRINCIPLES.c.principle_id == SCORES.c.principle_id)
        .where(*_scores_of(project_id, rubric))
        .group_by(SCORES.c.node_id)
        .subquery("scored")
    )
    return (
        statement.add_columns(scores.c.principles, scores.c.scores)
        .outerjoin(scores, scores.c.node_id == NODES.c.node_id)
        .order_by(NODES.c.node_id)
    )


def _scores_of(project_id: str, rubric: Rubric) -> list[ColumnElement[bool]]:
    return [
        SCORES.c.project_id == project_id,
        SCORES.c.rubric_id == rubric.rubric_id,
        SCORES.c.rubric_version == rubric.version,
    ]


def _project_node(row: RowMapping) -> ProjectNode:
    names = row.get("principles") or ()
    scores = row.get("scores") or ()
    return ProjectNode(from_row(Node, row), dict(zip(names, scores, strict=True)))
