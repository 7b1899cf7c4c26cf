"""Tables of the claim-verification domain: claims, verification results, consensus decisions,
training data, model checkpoints and service health."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Double,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.schema.base import Base, created_at, updated_at, version

EMPTY_JSON = text("'{}'::jsonb")


class Claim(Base):
    """A claim to verify, known to producers by its external id."""

    __tablename__ = "claims"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=func.gen_random_uuid())
    external_id: Mapped[str] = mapped_column(String(255), unique=True)
    content: Mapped[str] = mapped_column(Text)
    claim_type: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[str | None] = mapped_column(String(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=EMPTY_JSON)
    version: Mapped[int] = version()
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()

    __table_args__ = (
        # Claims of a type, newest first (keyset pages of claims_by_type).
        Index("ix_claims_type_recent", "claim_type", text("created_at DESC"), text("id DESC")),
        Index("ix_claims_created_at", text("created_at DESC")),
    )


class VerificationResult(Base):
    """One framework's verdict on a claim; append-only."""

    __tablename__ = "verification_results"

    result_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    claim_id: Mapped[str] = mapped_column(String(255))
    framework: Mapped[str] = mapped_column(String(50))
    result: Mapped[dict[str, Any]]
    confidence: Mapped[float] = mapped_column(Double)
    evidence: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)
    processing_time_ms: Mapped[int | None] = mapped_column(Integer)
    model_version: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()

    __table_args__ = (
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),
        CheckConstraint("processing_time_ms >= 0", name="processing_time_non_negative"),
        Index("ix_verification_results_claim_framework", "claim_id", "framework"),
        Index("ix_verification_results_recent", text("created_at DESC"), text("result_id DESC")),
    )


class ConsensusDecision(Base):
    """The consensus over a claim's verifications; the newest decision (by version) stands."""

    __tablename__ = "consensus_decisions"

    claim_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    consensus_result: Mapped[dict[str, Any]]
    participating_frameworks: Mapped[list[str]] = mapped_column(ARRAY(String(50)))
    consensus_type: Mapped[str] = mapped_column(String(50))
    consensus_confidence: Mapped[float] = mapped_column(Double)
    decision_time_ms: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[int] = version()
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()

    __table_args__ = (
        CheckConstraint(
            "consensus_confidence >= 0 AND consensus_confidence <= 1", name="confidence_range"
        ),
        Index("ix_consensus_decisions_created_at", text("created_at DESC")),
    )


class TrainingData(Base):
    """A labeled example for training a framework's model."""

    __tablename__ = "training_data"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    framework: Mapped[str] = mapped_column(String(50))
    claim_id: Mapped[str | None] = mapped_column(String(255))
    claim_text: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)
    validity: Mapped[bool]
    confidence: Mapped[float | None] = mapped_column(Double)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=EMPTY_JSON)
    used_in_training: Mapped[bool] = mapped_column(server_default=text("false"))
    training_batch_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()

    __table_args__ = (
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),
        Index("ix_training_data_framework_batch", "framework", "training_batch_id"),
        # The rows of one batch in order, whatever their framework (keyset pages).
        Index("ix_training_data_batch", "training_batch_id", "created_at", "id"),
        Index(
            "ix_training_data_unused",
            "framework",
            "created_at",
            "id",
            postgresql_where=text("NOT used_in_training"),
        ),
    )


class ModelCheckpoint(Base):
    """A trained model version; at most one is active per (model, framework)."""

    __tablename__ = "model_checkpoints"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=func.gen_random_uuid())
    model_name: Mapped[str] = mapped_column(String(255))
    framework: Mapped[str | None] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(50))
    checkpoint_path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)
    training_config: Mapped[dict[str, Any]] = mapped_column(server_default=EMPTY_JSON)
    is_active: Mapped[bool] = mapped_column(server_default=text("false"))
    activation_version: Mapped[int] = mapped_column(BigInteger, server_default="0")
    activated_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()

    __table_args__ = (
        UniqueConstraint("model_name", "version"),
        Index(
            "uq_model_checkpoints_one_active",
            "model_name",
            text("COALESCE(framework, '')"),
            unique=True,
            postgresql_where=text("is_active"),
        ),
    )


class ServiceHealth(Base):
    """The latest heartbeat of one instance of a service."""

    __tablename__ = "service_health"

    service_name: Mapped[str] = mapped_column(String(50), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    last_heartbeat: Mapped[dt.datetime]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", server_default=EMPTY_JSON)
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()

    __table_args__ = (
        Index("ix_service_health_service_heartbeat", "service_name", text("last_heartbeat DESC")),
    )
