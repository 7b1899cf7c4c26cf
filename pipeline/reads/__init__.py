"""The read side: repositories returning typed read models; never imports the write path."""

from __future__ import annotations

from pipeline.reads.agent_tasks import TaskReads
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
    LoadedProject,
    Node,
    NodeAtDepth,
    Page,
    Principle,
    Project,
    ProjectNode,
    Rubric,
    ServiceHeartbeat,
    TrainingCursor,
    TrainingExample,
    TranscriptEntry,
    TranscriptHit,
    Verification,
    VerificationCursor,
)
from pipeline.reads.projects import ProjectReads
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
    "LoadedProject",
    "Node",
    "NodeAtDepth",
    "Page",
    "Principle",
    "PrincipleScoreCache",
    "Project",
    "ProjectNode",
    "ProjectReads",
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
