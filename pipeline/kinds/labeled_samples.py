"""``save_labeled_samples``: human feedback on nodes, insert-if-absent by ``sample_id``.

A sample of a node that does not exist yet is reported back and its job retried later. A sample
is immutable: the same one again is a no-op, a different one under its id a conflict.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from pipeline.kinds.base import Row, Target, WriteKind
from pipeline.kinds.fields import STRICT, JsonObject, Key, Text, to_json


class Sample(BaseModel):
    """One labeled sample."""

    model_config = STRICT
    sample_id: uuid.UUID
    node_id: Key
    label: Text = Field(min_length=1)
    text: Text | None = None
    annotator: Key | None = None
    metadata: JsonObject = Field(default_factory=dict)


class SaveLabeledSamples(BaseModel):
    """Keyword arguments of ``save_labeled_samples``."""

    model_config = STRICT
    project_id: Key
    samples: list[Sample] = Field(min_length=1)


LABELED_SAMPLES = Target(
    name="labeled_samples",
    table="labeled_samples",
    columns=(
        ("sample_id", "uuid"),
        ("project_id", "text"),
        ("node_id", "text"),
        ("label", "text"),
        ("text", "text"),
        ("annotator", "text"),
        ("metadata", "text"),
    ),
    key=("sample_id",),
    reports=True,
    immutable=True,
    json_columns=("metadata",),
    sql="""
        WITH v AS (SELECT * FROM {rows}),
        placed AS (
            SELECT v.* FROM v WHERE EXISTS (
                SELECT 1 FROM nodes n WHERE n.project_id = v.project_id AND n.node_id = v.node_id)
        ),
        inserted AS (
            INSERT INTO labeled_samples
                (sample_id, project_id, node_id, label, text, annotator, metadata)
            SELECT sample_id, project_id, node_id, label, text, annotator,
                   CAST(metadata AS jsonb)
            FROM placed ORDER BY sample_id
            ON CONFLICT (sample_id) DO NOTHING
            RETURNING sample_id
        )
        SELECT 'missing', * FROM (SELECT sample_id FROM v EXCEPT SELECT sample_id FROM placed) m
        UNION ALL
        SELECT 'present', * FROM (
            SELECT sample_id FROM placed EXCEPT SELECT sample_id FROM inserted
        ) p WHERE (SELECT count(*) FROM inserted) < (SELECT count(*) FROM placed)
    """,
)


def _rows(p: SaveLabeledSamples, version: int) -> list[Row]:
    return [
        (s.sample_id, p.project_id, s.node_id, s.label, s.text, s.annotator, to_json(s.metadata))
        for s in p.samples
    ]


save_labeled_samples = WriteKind(
    "save_labeled_samples", SaveLabeledSamples, LABELED_SAMPLES, _rows, items="samples"
)
