"""The database schema: SQLAlchemy typed models, the single source Alembic migrates from.

The write kinds and the read repositories both import tables from here; neither imports the other.
"""

from pipeline.schema.agent_tasks import TRANSCRIPT_ROLES, Event, Transcript
from pipeline.schema.base import Base
from pipeline.schema.ops import AuditLog, DeadLetter
from pipeline.schema.taxonomy import (
    NODE_STATUSES,
    BranchStats,
    LabeledSample,
    Node,
    PrincipleScore,
    Project,
    Rubric,
    RubricPrinciple,
)
from pipeline.schema.verification import (
    Claim,
    ConsensusDecision,
    ModelCheckpoint,
    ServiceHealth,
    TrainingData,
    VerificationResult,
)

metadata = Base.metadata

__all__ = [
    "NODE_STATUSES",
    "TRANSCRIPT_ROLES",
    "AuditLog",
    "Base",
    "BranchStats",
    "Claim",
    "ConsensusDecision",
    "DeadLetter",
    "Event",
    "LabeledSample",
    "ModelCheckpoint",
    "Node",
    "PrincipleScore",
    "Project",
    "Rubric",
    "RubricPrinciple",
    "ServiceHealth",
    "TrainingData",
    "Transcript",
    "VerificationResult",
    "metadata",
]
