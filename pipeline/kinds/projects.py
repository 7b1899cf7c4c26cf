"""``upsert_project``: a project's name and config, last write (by version) wins."""

from __future__ import annotations

from pydantic import BaseModel, Field

from pipeline.kinds.base import Row, Target, WriteKind, newest
from pipeline.kinds.fields import STRICT, JsonObject, Key, Text, Version, to_json


class UpsertProject(BaseModel):
    """Keyword arguments of ``upsert_project``."""

    model_config = STRICT
    project_id: Key
    name: Text = Field(min_length=1)
    config: JsonObject = Field(default_factory=dict)
    version: Version | None = None


PROJECTS = Target(
    name="projects",
    table="projects",
    columns=(("project_id", "text"), ("name", "text"), ("config", "text"), ("version", "int8")),
    key=("project_id",),
    merge=newest("version"),
    reports=True,
    # The keys not written (a stale or repeated version) are looked for only when fewer rows
    # were written than sent (a one-time filter).
    sql="""
        WITH written AS (
            INSERT INTO projects AS t (project_id, name, config, version)
            SELECT project_id, name, CAST(config AS jsonb), version FROM {rows}
            ON CONFLICT (project_id) DO UPDATE
            SET name = EXCLUDED.name, config = EXCLUDED.config, version = EXCLUDED.version,
                updated_at = now()
            WHERE t.version < EXCLUDED.version
            RETURNING t.project_id
        )
        SELECT 'unchanged', * FROM (
            SELECT * FROM {keys} EXCEPT SELECT * FROM written
        ) d WHERE (SELECT count(*) FROM written) < {size}
    """,
)


def _rows(p: UpsertProject, version: int) -> list[Row]:
    return [(p.project_id, p.name, to_json(p.config), version if p.version is None else p.version)]


upsert_project = WriteKind("upsert_project", UpsertProject, PROJECTS, _rows)
