"""The node tree: ``insert_nodes``, ``update_scores`` and ``update_statuses``.

Nodes are saved: created if absent, updated (label, content, metadata, parent) by a newer
definition version. A node is placed only when its parent exists already or is placed in the same
statement (so a chain of new nodes lands together); nodes whose parent is missing are reported
back and their jobs retried later; a move under the node's own descendant is refused. Scores and
status are last-write-wins, each field with its own version, so an update of one score never
undoes a newer update of the other. Both update kinds feed one target, so ``nodes`` rows are
updated by one statement per batch, under the project's node-update lock. Their items are typed
dicts, not models: they are the busiest kinds, and pydantic validates a dict in under half the
time of a model and keeps it in less memory. Every change deletes the cached branch statistics of
the changed nodes' ancestors (a move: of the old ones too). The audit trigger records every
change (entity ``node``, id ``project_id/node_id``, the status job's ``actor``); score-only
updates only with ``audit_score_updates``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, NotRequired

from pydantic import AfterValidator, BaseModel, Field, model_validator, with_config
from typing_extensions import TypedDict

from pipeline.kinds.base import Invalidation, Row, Target, WriteKind, column_index, newest
from pipeline.kinds.fields import STRICT, Float, JsonObject, Key, Text, Version, to_json
from pipeline.schema.audit import SCORE_COLUMNS
from pipeline.schema.taxonomy import branch_stats_lock_key, node_updates_lock_key

Status = Literal["alive", "expanded", "pruned", "terminal", "failed"]

BRANCH_STATS = Invalidation(
    name="branch_stats",
    columns=("project_id", "node_id"),
    scope=(
        # The lock key is a constant SQL expression; no input is formatted in.
        f"""
        SELECT pg_advisory_xact_lock_shared({branch_stats_lock_key("p")})
        FROM unnest(CAST(:project_id AS text[])) AS p ORDER BY p
        """,  # noqa: S608
        # A statement of its own, so its snapshot is taken once the lock is held and sees the
        # statistics of every reader that held the lock before.
        """
        SELECT DISTINCT project_id FROM branch_stats
        WHERE project_id = ANY(CAST(:project_id AS text[]))
        """,
    ),
    statements=(
        """
        WITH RECURSIVE touched AS (
            SELECT n.project_id, n.node_id, n.parent_id
            FROM unnest(CAST(:project_id AS text[]), CAST(:node_id AS text[]))
                AS v(project_id, node_id)
            JOIN nodes n ON n.project_id = v.project_id AND n.node_id = v.node_id
          UNION
            SELECT p.project_id, p.node_id, p.parent_id
            FROM touched t JOIN nodes p ON p.project_id = t.project_id AND p.node_id = t.parent_id
        ),
        stale AS (
            SELECT b.project_id, b.node_id FROM branch_stats b
            JOIN touched t ON b.project_id = t.project_id AND b.node_id = t.node_id
            ORDER BY b.project_id, b.node_id
            FOR UPDATE OF b
        )
        DELETE FROM branch_stats b USING stale s
        WHERE b.project_id = s.project_id AND b.node_id = s.node_id
        """,
    ),
)


class NewNode(BaseModel):
    """One node to save: created if absent, else updated when the job's version is newer."""

    model_config = STRICT
    node_id: Key
    parent_id: Key | None = None
    label: Text
    content: Text | None = None
    status: Status = "alive"
    metadata: JsonObject = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_own_parent(self) -> NewNode:
        if self.parent_id == self.node_id:
            raise ValueError("a node cannot be its own parent")
        return self


class InsertNodes(BaseModel):
    """Keyword arguments of ``insert_nodes``."""

    model_config = STRICT
    project_id: Key
    nodes: list[NewNode] = Field(min_length=1)
    version: Version | None = None


# Two batches that move nodes of one project take turns, or they could each make half a cycle.
NODE_LOCK = f"""
    SELECT pg_advisory_xact_lock({node_updates_lock_key("p")})
    FROM unnest(CAST(:scopes AS text[])) AS p ORDER BY p
"""  # noqa: S608 - a constant SQL expression; no input is formatted in

NODES = Target(
    name="nodes",
    table="nodes",
    columns=(
        ("project_id", "text"),
        ("node_id", "text"),
        ("parent_id", "text"),
        ("label", "text"),
        ("content", "text"),
        ("status", "text"),
        ("status_version", "int8"),
        ("metadata", "text"),
        ("version", "int8"),
    ),
    key=("project_id", "node_id"),
    merge=newest("version"),
    reports=True,
    invalidates=BRANCH_STATS,
    lock=NODE_LOCK,
    # ``fresh``: the rows to write, new nodes and newer definitions of stored ones. A node is
    # placed when its parent exists or is placed in this statement (a chain of new nodes lands
    # together). A node moved under a new parent climbs from there through the tree as it will
    # be (the batch's parents over the stored ones): reaching itself, it is refused. The old
    # parent of a moved node is read by a subquery (a statement does not see its own changes)
    # and reported, so the branch statistics of its old ancestors are invalidated too.
    sql="""
        WITH RECURSIVE v AS (SELECT * FROM {rows}),
        fresh AS MATERIALIZED (
            SELECT v.*, n.node_id IS NOT NULL AS stored, n.parent_id AS stored_parent FROM v
            LEFT JOIN nodes n ON n.project_id = v.project_id AND n.node_id = v.node_id
            WHERE n.node_id IS NULL OR n.version < v.version
        ),
        placed AS (
            SELECT f.project_id, f.node_id FROM fresh f
            WHERE f.parent_id IS NULL OR EXISTS (
                SELECT 1 FROM nodes n
                WHERE n.project_id = f.project_id AND n.node_id = f.parent_id)
          UNION
            SELECT c.project_id, c.node_id
            FROM fresh c JOIN placed p ON c.project_id = p.project_id AND c.parent_id = p.node_id
        ),
        climb (project_id, start, cur) AS (
            SELECT project_id, node_id, parent_id FROM fresh
            WHERE stored AND parent_id IS NOT NULL AND parent_id IS DISTINCT FROM stored_parent
          UNION
            SELECT c.project_id, c.start,
                   CASE WHEN f.node_id IS NOT NULL THEN f.parent_id ELSE n.parent_id END
            FROM climb c
            LEFT JOIN fresh f ON f.project_id = c.project_id AND f.node_id = c.cur
            LEFT JOIN nodes n ON n.project_id = c.project_id AND n.node_id = c.cur
            WHERE c.cur <> c.start
              AND CASE WHEN f.node_id IS NOT NULL THEN f.parent_id ELSE n.parent_id END
                  IS NOT NULL
        ),
        cycles AS (SELECT DISTINCT project_id, start AS node_id FROM climb WHERE cur = start),
        written AS (
            INSERT INTO nodes AS t (project_id, node_id, parent_id, label, content, status,
                                    status_version, metadata, version)
            SELECT f.project_id, f.node_id, f.parent_id, f.label, f.content, f.status,
                   f.status_version, CAST(f.metadata AS jsonb), f.version
            FROM fresh f JOIN placed p ON p.project_id = f.project_id AND p.node_id = f.node_id
            LEFT JOIN cycles x ON x.project_id = f.project_id AND x.node_id = f.node_id
            WHERE x.node_id IS NULL
            ORDER BY f.project_id, f.node_id
            ON CONFLICT (project_id, node_id) DO UPDATE
            SET parent_id = EXCLUDED.parent_id, label = EXCLUDED.label,
                content = EXCLUDED.content, metadata = EXCLUDED.metadata,
                version = EXCLUDED.version, updated_at = now()
            WHERE t.version < EXCLUDED.version
            RETURNING t.project_id, t.node_id, t.parent_id,
                CASE WHEN t.xmax <> 0 THEN (
                    SELECT o.parent_id FROM nodes o
                    WHERE o.project_id = t.project_id AND o.node_id = t.node_id) END AS old_parent
        ),
        missing AS (
            SELECT project_id, node_id FROM fresh WHERE (SELECT count(*) FROM written) < {size}
            EXCEPT SELECT project_id, node_id FROM placed
            EXCEPT SELECT project_id, node_id FROM cycles
        ),
        unchanged AS (
            SELECT project_id, node_id FROM {keys} WHERE (SELECT count(*) FROM written) < {size}
            EXCEPT SELECT project_id, node_id FROM written
            EXCEPT SELECT project_id, node_id FROM missing
            EXCEPT SELECT project_id, node_id FROM cycles
        )
        SELECT 'rejected', project_id, node_id,
               'moving it under its new parent would make it its own ancestor'
        FROM cycles
        UNION ALL
        SELECT 'missing', project_id, node_id, NULL FROM missing
        UNION ALL
        SELECT 'unchanged', project_id, node_id, NULL FROM unchanged
        UNION ALL
        SELECT 'touched', project_id, old_parent, NULL FROM written
        WHERE old_parent IS NOT NULL AND old_parent IS DISTINCT FROM parent_id
    """,
)


def _insert_rows(p: InsertNodes, version: int) -> list[Row]:
    # The status a node is born with is the base any status update overrides, so it carries
    # version 0 unless the producer versions it explicitly; the definition (label, content,
    # metadata, parent) carries the job's version, by default its enqueue time.
    status_version = 0 if p.version is None else p.version
    definition = version if p.version is None else p.version
    return [
        (p.project_id, n.node_id, n.parent_id, n.label, n.content, n.status, status_version)
        + (to_json(n.metadata), definition)
        for n in p.nodes
    ]


insert_nodes = WriteKind("insert_nodes", InsertNodes, NODES, _insert_rows, items="nodes")

_UPDATE_COLUMNS = (
    ("project_id", "text"),
    ("node_id", "text"),
    ("rubric_score", "float8"),
    ("rubric_version", "int8"),
    ("ucb_score", "float8"),
    ("ucb_version", "int8"),
    ("status", "text"),
    ("status_version", "int8"),
    ("actor", "text"),
    ("detail", "bool"),  # merged from several rows: report which fields applied
)


def _at(column: str) -> int:
    return column_index("node_updates", _UPDATE_COLUMNS, column)


# Each field of a NODE_UPDATES row: its value, its version, and what goes with it (the actor of a
# status change), as positions in the row, resolved once.
_FIELDS: tuple[tuple[int, int, tuple[int, ...]], ...] = tuple(
    (_at(value), _at(version), tuple(map(_at, attached)))
    for value, version, attached in (
        ("rubric_score", "rubric_version", ()),
        ("ucb_score", "ucb_version", ()),
        ("status", "status_version", ("actor",)),
    )
)
_STATUS_VERSION = _at("status_version")
_DETAIL = _at("detail")


def _merge_fields(old: Row, new: Row) -> Row:
    """Each field from the row with its newer version. When both rows give fields to the result,
    it asks the statement which fields applied (its ``detail`` column), so that each job's receipt
    can tell; when one row has every newest field, it is that row, as it was sent."""
    merged = list(old)
    took_new = kept_old = False
    for value, ver, attached in _FIELDS:
        if new[ver] is not None and (old[ver] is None or new[ver] > old[ver]):
            for i in (value, ver, *attached):
                merged[i] = new[i]
            took_new = True
        elif old[ver] is not None:
            kept_old = True
    if not took_new:
        return old
    if not kept_old:
        return new
    merged[_DETAIL] = True
    return tuple(merged)


def _credit(row: Row, written: Row, fields: int | None) -> bool:
    """Whether ``row`` applied: it is the row written, or (for a row merged from several) one of
    its fields is the one written, and applied by ``fields``, the statement's bit mask in
    ``_FIELDS`` order."""
    if not written[_DETAIL]:
        return row is written
    for bit, (value, ver, _) in enumerate(_FIELDS):
        if row[ver] is None or row[ver] != written[ver] or row[value] != written[value]:
            continue
        if fields is None or fields & (1 << bit):
            return True
    return False


def _changes(rows: Sequence[Row]) -> Sequence[str]:
    """Score columns only, when no row of the batch carries a status (the audit's hint)."""
    return SCORE_COLUMNS if all(row[_STATUS_VERSION] is None for row in rows) else ()


NODE_UPDATES = Target(
    name="node_updates",
    table="nodes",
    follows=NODES,  # updates the nodes saved in the same batch
    columns=_UPDATE_COLUMNS,
    key=("project_id", "node_id"),
    merge=_merge_fields,
    credit=_credit,
    actors=("project_id", "node_id"),
    changes=_changes,
    reports=True,
    invalidates=BRANCH_STATS,
    # Two batches that update the same nodes must not lock them in opposite orders. An UPDATE …
    # FROM locks rows in its join's order (the array's for a nested loop, the heap's for a hash
    # join), so the rows alone cannot promise an order; locking them first, in key order, is a
    # second pass as slow as the update (docs/performance-log.md). Instead every batch takes its
    # projects' node-update locks (advisory, in project order), and a statement run after that
    # sees every earlier holder's commit: two batches of one project take turns, batches of
    # different projects never meet.
    lock=NODE_LOCK,
    # For a node several jobs of the batch updated, the fields that applied are read by a
    # subquery: a statement does not see its own changes.
    # Rows that changed nothing are either stale or missing; only when some are is the table
    # asked which (the one-time filter skips the anti-join otherwise).
    sql="""
        WITH v AS (SELECT * FROM {rows}),
        updated AS (
            UPDATE nodes AS n SET
                rubric_score = CASE WHEN v.rubric_version > n.rubric_score_version
                                    THEN v.rubric_score ELSE n.rubric_score END,
                rubric_score_version = GREATEST(n.rubric_score_version, v.rubric_version),
                ucb_score = CASE WHEN v.ucb_version > n.ucb_score_version
                                 THEN v.ucb_score ELSE n.ucb_score END,
                ucb_score_version = GREATEST(n.ucb_score_version, v.ucb_version),
                status = CASE WHEN v.status_version > n.status_version
                              THEN v.status ELSE n.status END,
                status_version = GREATEST(n.status_version, v.status_version),
                updated_at = now()
            FROM v
            WHERE n.project_id = v.project_id AND n.node_id = v.node_id
              AND (v.rubric_version > n.rubric_score_version
                   OR v.ucb_version > n.ucb_score_version
                   OR v.status_version > n.status_version)
            RETURNING n.project_id, n.node_id,
                CASE WHEN v.detail THEN (
                    SELECT CASE WHEN v.rubric_version > o.rubric_score_version THEN 1 ELSE 0 END
                         + CASE WHEN v.ucb_version > o.ucb_score_version THEN 2 ELSE 0 END
                         + CASE WHEN v.status_version > o.status_version THEN 4 ELSE 0 END
                    FROM nodes o
                    WHERE o.project_id = n.project_id AND o.node_id = n.node_id) END AS fields
        ),
        unapplied AS (
            SELECT project_id, node_id FROM {keys} WHERE (SELECT count(*) FROM updated) < {size}
            EXCEPT SELECT project_id, node_id FROM updated
        )
        SELECT CASE WHEN n.node_id IS NULL THEN 'missing' ELSE 'unchanged' END,
               a.project_id, a.node_id, NULL
        FROM unapplied a
        LEFT JOIN nodes n ON n.project_id = a.project_id AND n.node_id = a.node_id
        UNION ALL
        SELECT 'fields', project_id, node_id, fields FROM updated WHERE fields IS NOT NULL
    """,
)


@with_config(STRICT)
class ScoreUpdate(TypedDict):
    """New scores of one node; a score left out keeps its stored value, one given as null is
    cleared."""

    node_id: Key
    rubric_score: NotRequired[Float | None]
    ucb_score: NotRequired[Float | None]
    version: NotRequired[Version | None]


def _some_score(item: ScoreUpdate) -> ScoreUpdate:
    if "rubric_score" not in item and "ucb_score" not in item:
        raise ValueError("a score update needs rubric_score, ucb_score or both (null clears one)")
    return item


class UpdateScores(BaseModel):
    """Keyword arguments of ``update_scores``."""

    model_config = STRICT
    project_id: Key
    scores: list[Annotated[ScoreUpdate, AfterValidator(_some_score)]] = Field(min_length=1)


def _score_rows(p: UpdateScores, version: int) -> list[Row]:
    rows: list[Row] = []
    project_id = p.project_id
    for s in p.scores:
        v = s.get("version")
        if v is None:
            v = version
        # A score given as null clears it (at this version); a score left out stays as it is.
        rows.append(
            (
                project_id,
                s["node_id"],
                s.get("rubric_score"),
                v if "rubric_score" in s else None,
                s.get("ucb_score"),
                v if "ucb_score" in s else None,
                None,
                None,
                None,
                False,
            )
        )
    return rows


update_scores = WriteKind("update_scores", UpdateScores, NODE_UPDATES, _score_rows, items="scores")


@with_config(STRICT)
class StatusUpdate(TypedDict):
    """New status of one node."""

    node_id: Key
    status: Status
    version: NotRequired[Version | None]


class UpdateStatuses(BaseModel):
    """Keyword arguments of ``update_statuses``."""

    model_config = STRICT
    project_id: Key
    statuses: list[StatusUpdate] = Field(min_length=1)
    actor: Key | None = None


def _status_rows(p: UpdateStatuses, version: int) -> list[Row]:
    rows: list[Row] = []
    for s in p.statuses:
        v = s.get("version")
        rows.append(
            (p.project_id, s["node_id"], None, None, None, None, s["status"])
            + (version if v is None else v, p.actor, False)
        )
    return rows


update_statuses = WriteKind(
    "update_statuses", UpdateStatuses, NODE_UPDATES, _status_rows, items="statuses"
)
