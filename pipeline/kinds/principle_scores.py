"""``save_principle_scores``: a node's score on each principle of a rubric version.

Insert-if-absent by (node, principle, rubric version): a score for a rubric version never
changes, which keeps the read-side cache coherent without invalidation. The same score again is
a no-op; a different one is a conflict, and the first stands. The principle's real id
is looked up by name; a score whose node or principle does not exist yet is reported back and
its job retried later. A score that was not inserted is named again by its principle's name
(looked up by id) for the conflicts check.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipeline.kinds.base import Row, Target, WriteKind
from pipeline.kinds.fields import STRICT, Float, Int32, Key


class PrincipleScoreItem(BaseModel):
    """One node's score on one principle."""

    model_config = STRICT
    node_id: Key
    rubric_id: Key
    rubric_version: Int32
    principle: Key
    score: Float


class SavePrincipleScores(BaseModel):
    """Keyword arguments of ``save_principle_scores``."""

    model_config = STRICT
    project_id: Key
    scores: list[PrincipleScoreItem] = Field(min_length=1)


PRINCIPLE_SCORES = Target(
    name="principle_scores",
    table="principle_scores",
    columns=(
        ("project_id", "text"),
        ("node_id", "text"),
        ("rubric_id", "text"),
        ("rubric_version", "int4"),
        ("principle", "text"),
        ("score", "float8"),
    ),
    key=("project_id", "node_id", "rubric_id", "rubric_version", "principle"),
    reports=True,
    immutable=True,
    sql="""
        WITH v AS (SELECT * FROM {rows}),
        resolved AS (
            SELECT v.*, p.principle_id FROM v
            JOIN rubric_principles p
              ON p.project_id = v.project_id AND p.rubric_id = v.rubric_id
             AND p.rubric_version = v.rubric_version AND p.name = v.principle
            WHERE EXISTS (SELECT 1 FROM nodes n
                          WHERE n.project_id = v.project_id AND n.node_id = v.node_id)
        ),
        inserted AS (
            INSERT INTO principle_scores
                (project_id, node_id, principle_id, rubric_id, rubric_version, score)
            SELECT project_id, node_id, principle_id, rubric_id, rubric_version, score
            FROM resolved ORDER BY project_id, node_id, principle_id
            ON CONFLICT (project_id, node_id, principle_id) DO NOTHING
            RETURNING project_id, node_id, principle_id
        )
        SELECT 'missing', * FROM (
            SELECT project_id, node_id, rubric_id, rubric_version, principle FROM v
            EXCEPT SELECT project_id, node_id, rubric_id, rubric_version, principle FROM resolved
        ) m
        UNION ALL
        SELECT 'present', d.project_id, d.node_id, p.rubric_id, p.rubric_version, p.name
        FROM (SELECT project_id, node_id, principle_id FROM resolved
              EXCEPT SELECT project_id, node_id, principle_id FROM inserted) d
        JOIN rubric_principles p ON p.principle_id = d.principle_id
        WHERE (SELECT count(*) FROM inserted) < (SELECT count(*) FROM resolved)
    """,
    # The table keys a score by the principle's id; the batch names the principle.
    conflicts="""
        SELECT v.project_id, v.node_id, v.rubric_id, v.rubric_version, v.principle,
               'differs in score'
        FROM {rows}
        JOIN rubric_principles p
          ON p.project_id = v.project_id AND p.rubric_id = v.rubric_id
         AND p.rubric_version = v.rubric_version AND p.name = v.principle
        JOIN principle_scores s
          ON s.project_id = v.project_id AND s.node_id = v.node_id
         AND s.principle_id = p.principle_id
        WHERE s.score IS DISTINCT FROM v.score
    """,
)


def _rows(p: SavePrincipleScores, version: int) -> list[Row]:
    return [
        (p.project_id, s.node_id, s.rubric_id, s.rubric_version, s.principle, s.score)
        for s in p.scores
    ]


save_principle_scores = WriteKind(
    "save_principle_scores", SavePrincipleScores, PRINCIPLE_SCORES, _rows, items="scores"
)
