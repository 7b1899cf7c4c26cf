"""``save_rubric``: a new, immutable rubric version with its principles.

The principles are inserted only together with the rubric version that this statement itself
created, so a version's principle list never changes after its first commit (the read-side
cache relies on that). A second, different definition of a version (other principles, order,
descriptions or weights), in the same batch or a later one, is a conflict: the first stands and
that job is dead-lettered; the same definition again is a no-op. Principles get identities from
the database, not from their text.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field, field_validator

from pipeline.kinds.base import Row, Target, WriteKind
from pipeline.kinds.fields import STRICT, Float, Int32, Key, Text


class Principle(BaseModel):
    """One principle of a rubric."""

    model_config = STRICT
    name: Key
    description: Text = ""
    weight: Float = Field(default=1.0, ge=0)


class SaveRubric(BaseModel):
    """Keyword arguments of ``save_rubric``."""

    model_config = STRICT
    project_id: Key
    rubric_id: Key
    version: Int32
    principles: list[Principle] = Field(min_length=1)

    @field_validator("principles")
    @classmethod
    def _unique_names(cls, principles: list[Principle]) -> list[Principle]:
        names = [p.name for p in principles]
        if len(set(names)) != len(names):
            raise ValueError("principle names must be unique within a rubric")
        return principles


RUBRICS = Target(
    name="rubrics",
    table="rubrics",
    # One row per rubric version, its principles a JSON array: the version is the unit of
    # definition, so two different definitions of it are a conflict, never merged.
    columns=(
        ("project_id", "text"),
        ("rubric_id", "text"),
        ("version", "int4"),
        ("principles", "text"),
    ),
    key=("project_id", "rubric_id", "version"),
    reports=True,
    immutable=True,
    # The principles are unnested in the select list (not a lateral function scan in FROM), so
    # no function is scanned once per row of a batch-sized set.
    sql="""
        WITH v AS (SELECT * FROM {rows}),
        created AS (
            INSERT INTO rubrics (project_id, rubric_id, version)
            SELECT project_id, rubric_id, version FROM v ORDER BY 1, 2, 3
            ON CONFLICT DO NOTHING
            RETURNING project_id, rubric_id, version
        ),
        principles AS (
            INSERT INTO rubric_principles
                (project_id, rubric_id, rubric_version, name, description, weight, position)
            SELECT project_id, rubric_id, version, p->>'name', p->>'description',
                   CAST(p->>'weight' AS float8), CAST(p->>'position' AS int4)
            FROM (SELECT v.project_id, v.rubric_id, v.version,
                         jsonb_array_elements(CAST(v.principles AS jsonb)) AS p
                  FROM v JOIN created USING (project_id, rubric_id, version)) e
            ORDER BY 1, 2, 3, 4
        )
        SELECT 'present', project_id, rubric_id, version
        FROM (SELECT project_id, rubric_id, version FROM v
              EXCEPT SELECT project_id, rubric_id, version FROM created) d
        WHERE (SELECT count(*) FROM created) < {size}
    """,
    conflicts="""
        WITH v AS (SELECT * FROM {rows}),
        principles AS (
            SELECT project_id, rubric_id, version, true AS sent, p->>'name' AS name,
                   p->>'description' AS description, CAST(p->>'weight' AS float8) AS weight,
                   CAST(p->>'position' AS int4) AS position
            FROM (SELECT project_id, rubric_id, version,
                         jsonb_array_elements(CAST(principles AS jsonb)) AS p
                  FROM v) e
          UNION ALL
            SELECT v.project_id, v.rubric_id, v.version, false, r.name, r.description, r.weight,
                   r.position
            FROM v JOIN rubric_principles r
              ON r.project_id = v.project_id AND r.rubric_id = v.rubric_id
             AND r.rubric_version = v.version
        ),
        compared AS (
            SELECT project_id, rubric_id, version,
                   array_agg(name ORDER BY position) FILTER (WHERE sent) AS sent_names,
                   array_agg(name ORDER BY position) FILTER (WHERE NOT sent) AS stored_names,
                   array_agg(description ORDER BY position) FILTER (WHERE sent) AS sent_texts,
                   array_agg(description ORDER BY position) FILTER (WHERE NOT sent) AS texts,
                   array_agg(weight ORDER BY position) FILTER (WHERE sent) AS sent_weights,
                   array_agg(weight ORDER BY position) FILTER (WHERE NOT sent) AS weights
            FROM principles GROUP BY project_id, rubric_id, version
        )
        SELECT project_id, rubric_id, version,
               CASE WHEN sent_names IS DISTINCT FROM stored_names
                    THEN 'principles differ: stored ['
                         || coalesce(array_to_string(stored_names, ', '), '')
                         || '], sent [' || array_to_string(sent_names, ', ') || ']'
                    ELSE 'the descriptions or weights of its principles differ' END
        FROM compared
        WHERE (sent_names, sent_texts, sent_weights) IS DISTINCT FROM (stored_names, texts, weights)
    """,
)


def _rows(p: SaveRubric, version: int) -> list[Row]:
    principles = [
        {"name": pr.name, "description": pr.description, "weight": pr.weight, "position": i}
        for i, pr in enumerate(p.principles)
    ]
    return [(p.project_id, p.rubric_id, p.version, json.dumps(principles, separators=(",", ":")))]


save_rubric = WriteKind("save_rubric", SaveRubric, RUBRICS, _rows)
