"""The read side: repositories returning typed read models; never imports the write path."""

from __future__ import annotations

from pipeline.reads.audit import AuditReads
from pipeline.reads.cache import PrincipleScoreCache
from pipeline.reads.metrics import READ_METRICS
from pipeline.reads.models import (
    AuditEntry,
    BranchStats,
    Checkpoint,
    Claim,
    ClaimWithVerifications,
    Consensus,
    EventCursor,
    EventRecord,
    LabeledSample,
    Node,
    NodeAtDepth,
    Page,
    Principle,
    Rubric,
    ServiceHeartbeat,
    TrainingCursor,
    TrainingExample,
    TranscriptEntry,
    TranscriptHit,
    Verification,
    VerificationCursor,
)
from pipeline.reads.tasks import TaskReads
from pipeline.reads.taxonomy import TaxonomyReads
from pipeline.reads.verification import VerificationReads

__all__ = [
    "READ_METRICS",
    "AuditEntry",
    "AuditReads",
    "BranchStats",
    "Checkpoint",
    "Claim",
    "ClaimWithVerifications",
    "Consensus",
    "EventCursor",
    "EventRecord",
    "LabeledSample",
    "Node",
    "NodeAtDepth",
    "Page",
    "Principle",
    "PrincipleScoreCache",
    "Rubric",
    "ServiceHeartbeat",
    "TaskReads",
    "TaxonomyReads",
    "TrainingCursor",
    "TrainingExample",
    "TranscriptEntry",
    "TranscriptHit",
    "Verification",
    "VerificationCursor",
    "VerificationReads",
]
