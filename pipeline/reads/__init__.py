"""The read side: repositories returning typed read models; never imports the write path."""

from __future__ import annotations

from pipeline.reads.cache import PrincipleScoreCache
from pipeline.reads.models import (
    BranchStats,
    LabeledSample,
    Node,
    NodeAtDepth,
    Principle,
    Rubric,
)
from pipeline.reads.taxonomy import TaxonomyReads

__all__ = [
    "BranchStats",
    "LabeledSample",
    "Node",
    "NodeAtDepth",
    "Principle",
    "PrincipleScoreCache",
    "Rubric",
    "TaxonomyReads",
]
