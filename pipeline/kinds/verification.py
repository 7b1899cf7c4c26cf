"""The claim-verification domain: ``upsert_claims``, ``record_verifications``,
``record_consensus``.

Claims and consensus decisions are last-write-wins by version; the audit trigger records each
change with the job's ``actor``. Verification results are
append-only and immutable, insert-if-absent by ``result_id`` (a different result under an
existing id is a conflict). A verification or decision names its claim by
the claim's external id; it does not need the claim to exist first.
"""

from __future__ import annotations

import json
import uuid

from pydantic import BaseModel, Field

from pipeline.kinds.base import Row, Target, WriteKind, newest
from pipeline.kinds.fields import (
    STRICT,
    Float,
    Int32,
    JsonObject,
    Key,
    MediumKey,
    ShortKey,
    Text,
    Version,
    to_json,
)

Confidence = Float


class ClaimItem(BaseModel):
    """One claim."""

    model_config = STRICT
    external_id: Key
    content: Text = Field(min_length=1)
    claim_type: MediumKey | None = None
    source: Key | None = None
    metadata: JsonObject = Field(default_factory=dict)
    version: Version | None = None


class UpsertClaims(BaseModel):
    """Keyword arguments of ``upsert_claims``."""

    model_config = STRICT
    claims: list[ClaimItem] = Field(min_length=1)
    actor: Key | None = None


CLAIMS = Target(
    name="claims",
    table="claims",
    columns=(
        ("external_id", "text"),
        ("content", "text"),
        ("claim_type", "text"),
        ("source", "text"),
        ("metadata", "text"),
        ("version", "int8"),
        ("actor", "text"),
    ),
    key=("external_id",),
    merge=newest("version"),
    reports=True,
    actors=("external_id",),
    sql="""
        WITH v AS (SELECT * FROM {rows}),
        written AS (
            INSERT INTO claims AS t (external_id, content, claim_type, source, metadata, version)
            SELECT external_id, content, claim_type, source, CAST(metadata AS jsonb), version
            FROM v
            ON CONFLICT (external_id) DO UPDATE
            SET content = EXCLUDED.content, claim_type = EXCLUDED.claim_type,
                source = EXCLUDED.source, metadata = EXCLUDED.metadata,
                version = EXCLUDED.version, updated_at = now()
            WHERE t.version < EXCLUDED.version
            RETURNING t.external_id
        )
        SELECT 'unchanged', * FROM (
            SELECT external_id FROM v EXCEPT SELECT external_id FROM written
        ) d WHERE (SELECT count(*) FROM written) < {size}
    """,
)


def _claim_rows(p: UpsertClaims, version: int) -> list[Row]:
    return [
        (c.external_id, c.content, c.claim_type, c.source, to_json(c.metadata))
        + (version if c.version is None else c.version, p.actor)
        for c in p.claims
    ]


upsert_claims = WriteKind("upsert_claims", UpsertClaims, CLAIMS, _claim_rows, items="claims")


class VerificationItem(BaseModel):
    """One framework's verdict on a claim."""

    model_config = STRICT
    result_id: uuid.UUID
    claim_id: Key
    framework: ShortKey
    result: JsonObject
    confidence: Confidence = Field(ge=0, le=1)
    evidence: JsonObject = Field(default_factory=dict)
    processing_time_ms: Int32 | None = None
    model_version: ShortKey | None = None


class RecordVerifications(BaseModel):
    """Keyword arguments of ``record_verifications``."""

    model_config = STRICT
    results: list[VerificationItem] = Field(min_length=1)


VERIFICATIONS = Target(
    name="verification_results",
    table="verification_results",
    columns=(
        ("result_id", "uuid"),
        ("claim_id", "text"),
        ("framework", "text"),
        ("result", "text"),
        ("confidence", "float8"),
        ("evidence", "text"),
        ("processing_time_ms", "int4"),
        ("model_version", "text"),
    ),
    key=("result_id",),
    reports=True,
    immutable=True,
    json_columns=("result", "evidence"),
    sql="""
        WITH inserted AS (
            INSERT INTO verification_results (result_id, claim_id, framework, result, confidence,
                                              evidence, processing_time_ms, model_version)
            SELECT result_id, claim_id, framework, CAST(result AS jsonb), confidence,
                   CAST(evidence AS jsonb), processing_time_ms, model_version
            FROM {rows}
            ON CONFLICT (result_id) DO NOTHING
            RETURNING result_id
        )
        SELECT 'present', * FROM (
            SELECT * FROM {keys} EXCEPT SELECT * FROM inserted
        ) d WHERE (SELECT count(*) FROM inserted) < {size}
    """,
)


def _verification_rows(p: RecordVerifications, version: int) -> list[Row]:
    return [
        (r.result_id, r.claim_id, r.framework, to_json(r.result), r.confidence)
        + (to_json(r.evidence), r.processing_time_ms, r.model_version)
        for r in p.results
    ]


record_verifications = WriteKind(
    "record_verifications", RecordVerifications, VERIFICATIONS, _verification_rows, items="results"
)


class DecisionItem(BaseModel):
    """The consensus over one claim."""

    model_config = STRICT
    claim_id: Key
    consensus_result: JsonObject
    participating_frameworks: list[ShortKey] = Field(min_length=1)
    consensus_type: ShortKey
    consensus_confidence: Confidence = Field(ge=0, le=1)
    decision_time_ms: Int32 | None = None
    version: Version | None = None


class RecordConsensus(BaseModel):
    """Keyword arguments of ``record_consensus``."""

    model_config = STRICT
    decisions: list[DecisionItem] = Field(min_length=1)
    actor: Key | None = None


CONSENSUS = Target(
    name="consensus_decisions",
    table="consensus_decisions",
    columns=(
        ("claim_id", "text"),
        ("consensus_result", "text"),
        ("participating_frameworks", "text"),  # a JSON array: unnest cannot carry arrays
        ("consensus_type", "text"),
        ("consensus_confidence", "float8"),
        ("decision_time_ms", "int4"),
        ("version", "int8"),
        ("actor", "text"),
    ),
    key=("claim_id",),
    merge=newest("version"),
    reports=True,
    actors=("claim_id",),
    sql="""
        WITH v AS (SELECT * FROM {rows}),
        written AS (
            INSERT INTO consensus_decisions AS t
                (claim_id, consensus_result, participating_frameworks, consensus_type,
                 consensus_confidence, decision_time_ms, version)
            SELECT claim_id, CAST(consensus_result AS jsonb),
                   ARRAY(SELECT jsonb_array_elements_text(CAST(participating_frameworks AS jsonb))),
                   consensus_type, consensus_confidence, decision_time_ms, version
            FROM v
            ON CONFLICT (claim_id) DO UPDATE
            SET consensus_result = EXCLUDED.consensus_result,
                participating_frameworks = EXCLUDED.participating_frameworks,
                consensus_type = EXCLUDED.consensus_type,
                consensus_confidence = EXCLUDED.consensus_confidence,
                decision_time_ms = EXCLUDED.decision_time_ms,
                version = EXCLUDED.version, updated_at = now()
            WHERE t.version < EXCLUDED.version
            RETURNING t.claim_id
        )
        SELECT 'unchanged', * FROM (
            SELECT claim_id FROM v EXCEPT SELECT claim_id FROM written
        ) d WHERE (SELECT count(*) FROM written) < {size}
    """,
)


def _decision_rows(p: RecordConsensus, version: int) -> list[Row]:
    return [
        (d.claim_id, to_json(d.consensus_result), json.dumps(d.participating_frameworks))
        + (d.consensus_type, d.consensus_confidence, d.decision_time_ms)
        + (version if d.version is None else d.version, p.actor)
        for d in p.decisions
    ]


record_consensus = WriteKind(
    "record_consensus", RecordConsensus, CONSENSUS, _decision_rows, items="decisions"
)
