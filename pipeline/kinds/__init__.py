"""The registry of write kinds: every arq job function the worker serves.

To add a kind, write its module (payload model, target, rows) and list it here.
"""

from __future__ import annotations

from typing import Any

from pipeline.kinds.agent_tasks import append_transcripts, record_events
from pipeline.kinds.base import Invalidation, Row, Target, WriteKind
from pipeline.kinds.checkpoints import activate_checkpoint, register_checkpoint
from pipeline.kinds.heartbeats import heartbeat
from pipeline.kinds.labeled_samples import save_labeled_samples
from pipeline.kinds.nodes import insert_nodes, update_scores, update_statuses
from pipeline.kinds.principle_scores import save_principle_scores
from pipeline.kinds.projects import upsert_project
from pipeline.kinds.rubrics import save_rubric
from pipeline.kinds.training import mark_training_used, record_training_data
from pipeline.kinds.verification import record_consensus, record_verifications, upsert_claims

KINDS: tuple[WriteKind[Any], ...] = (
    upsert_project,
    save_rubric,
    insert_nodes,
    update_scores,
    update_statuses,
    save_principle_scores,
    save_labeled_samples,
    upsert_claims,
    record_verifications,
    record_consensus,
    record_training_data,
    mark_training_used,
    register_checkpoint,
    activate_checkpoint,
    heartbeat,
    append_transcripts,
    record_events,
)
BY_NAME: dict[str, WriteKind[Any]] = {kind.name: kind for kind in KINDS}
#: The job that carries writes of several kinds as one unit: all commit, or none.
ATOMIC = "atomic"
#: Every job function a producer may enqueue.
FUNCTION_NAMES: frozenset[str] = frozenset(BY_NAME) | {ATOMIC}

__all__ = [
    "ATOMIC",
    "BY_NAME",
    "FUNCTION_NAMES",
    "KINDS",
    "Invalidation",
    "Row",
    "Target",
    "WriteKind",
]
