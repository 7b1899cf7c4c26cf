"""``save_rubric``: a new, immutable rubric version with its principles.

The principles are inserted only together with the rubric version that this statement itself
created, so a version's principle list never changes after its first commit (the read-side
cache relies on that). Principles get identities from the database, not from their text.
"""

from __future__ import annotations

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
    order=10,
    columns=(
        ("project_id", "text"),
        ("rubric_id", "text"),
        ("version", "int4"),
        ("name", "text"),
        ("description", "text"),
        ("weight", "float8"),
        ("position", "int4"),
    ),
    key=("project_id", "rubric_id", "version", "name"),
    sql="""
        WITH v AS (SELECT * FROM {rows}),
        created AS (
            INSERT INTO rubrics (project_id, rubric_id, version)
            SELECT DISTINCT project_id, rubric_id, version FROM v ORDER BY 1, 2, 3
            ON CONFLICT DO NOTHING
            RETURNING project_id, rubric_id, version
        )
        INSERT INTO rubric_principles
            (project_id, rubric_id, rubric_version, name, description, weight, position)
        SELECT v.project_id, v.rubric_id, v.version, v.name, v.description, v.weight, v.position
        FROM v JOIN created USING (project_id, rubric_id, version)
        ORDER BY 1, 2, 3, 4
    """,
)


def _rows(p: SaveRubric, version: int) -> list[Row]:
    return [
        (p.project_id, p.rubric_id, p.version, pr.name, pr.description, pr.weight, i)
        for i, pr in enumerate(p.principles)
    ]


save_rubric = WriteKind("save_rubric", SaveRubric, RUBRICS, _rows)
