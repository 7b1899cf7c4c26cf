"""The database schema: SQLAlchemy typed models, the single source Alembic migrates from.

The write kinds and the read repositories both import tables from here; neither imports the other.
"""

from pipeline.schema.base import Base
from pipeline.schema.ops import DeadLetter
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

metadata = Base.metadata

__all__ = [
    "NODE_STATUSES",
    "Base",
    "BranchStats",
    "DeadLetter",
    "LabeledSample",
    "Node",
    "PrincipleScore",
    "Project",
    "Rubric",
    "RubricPrinciple",
    "metadata",
]
