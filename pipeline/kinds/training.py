"""Training data: ``record_training_data`` (insert-if-absent by id; an example is immutable, so a
different one under an existing id is a conflict) and ``mark_training_used`` (one set-based
update that assigns many rows to a training batch)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from pipeline.kinds.base import Row, Target, WriteKind
from pipeline.kinds.fields import STRICT, Bool, Float, JsonObject, Key, ShortKey, Text, to_json


class TrainingItem(BaseModel):
    """One labeled example."""

    model_config = STRICT
    id: uuid.UUID
    framework: ShortKey
    claim_id: Key | None = None
    claim_text: Text = Field(min_length=1)
    evidence: JsonObject = Field(default_factory=dict)
    validity: Bool
    confidence: Float | None = Field(default=None, ge=0, le=1)
    metadata: JsonObject = Field(default_factory=dict)


class RecordTrainingData(BaseModel):
    """Keyword arguments of ``record_training_data``."""

    model_config = STRICT
    items: list[TrainingItem] = Field(min_length=1)


TRAINING_DATA = Target(
    name="training_data",
    table="training_data",
    columns=(
        ("id", "uuid"),
        ("framework", "text"),
        ("claim_id", "text"),
        ("claim_text", "text"),
        ("evidence", "text"),
        ("validity", "bool"),
        ("confidence", "float8"),
        ("metadata", "text"),
    ),
    key=("id",),
    reports=True,
    immutable=True,
    json_columns=("evidence", "metadata"),
    # Whether and where a row was used is not part of its definition: it is not compared.
    sql="""
        WITH inserted AS (
            INSERT INTO training_data (id, framework, claim_id, claim_text, evidence, validity,
                                       confidence, metadata)
            SELECT id, framework, claim_id, claim_text, CAST(evidence AS jsonb), validity,
                   confidence, CAST(metadata AS jsonb)
            FROM {rows}
            ON CONFLICT (id) DO NOTHING
            RETURNING id
        )
        SELECT 'present', * FROM (
            SELECT * FROM {keys} EXCEPT SELECT * FROM inserted
        ) d WHERE (SELECT count(*) FROM inserted) < {size}
    """,
)


def _training_rows(p: RecordTrainingData, version: int) -> list[Row]:
    return [
        (i.id, i.framework, i.claim_id, i.claim_text, to_json(i.evidence), i.validity)
        + (i.confidence, to_json(i.metadata))
        for i in p.items
    ]


record_training_data = WriteKind(
    "record_training_data", RecordTrainingData, TRAINING_DATA, _training_rows, items="items"
)


class MarkTrainingUsed(BaseModel):
    """Keyword arguments of ``mark_training_used``."""

    model_config = STRICT
    training_batch_id: Key
    ids: list[uuid.UUID] = Field(min_length=1)


TRAINING_USED = Target(
    name="training_used",
    table="training_data",
    follows=TRAINING_DATA,  # marks the examples recorded in the same batch
    columns=(("id", "uuid"), ("training_batch_id", "text")),
    key=("id",),
    reports=True,
    # Rows are locked in key order first (see NODE_UPDATES); a row already used stays in the
    # batch it was first used in, so a re-run changes nothing.
    sql="""
        WITH v AS (SELECT * FROM {rows}),
        locked AS MATERIALIZED (
            SELECT v.* FROM training_data t JOIN v USING (id)
            ORDER BY t.id
            FOR NO KEY UPDATE OF t
        ),
        marked AS (
            UPDATE training_data t
            SET used_in_training = true, training_batch_id = l.training_batch_id, updated_at = now()
            FROM locked l
            WHERE t.id = l.id AND NOT t.used_in_training
            RETURNING t.id
        )
        SELECT 'missing', id FROM (SELECT id FROM v EXCEPT SELECT id FROM locked) m
        UNION ALL
        SELECT 'unchanged', id FROM (SELECT id FROM locked EXCEPT SELECT id FROM marked) u
    """,
)


def _used_rows(p: MarkTrainingUsed, version: int) -> list[Row]:
    return [(i, p.training_batch_id) for i in p.ids]


mark_training_used = WriteKind(
    "mark_training_used", MarkTrainingUsed, TRAINING_USED, _used_rows, items="ids"
)
