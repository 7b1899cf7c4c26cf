"""Read models: frozen snapshots of rows, so no ORM object (or lazy load) leaks out of a read."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Model = TypeVar("_Model", bound="DataclassInstance")
_Item = TypeVar("_Item")
_Cursor = TypeVar("_Cursor")


@dataclass(frozen=True, slots=True)
class Node:
    """A node of a project's taxonomy tree as it was when read."""

    project_id: str
    node_id: str
    parent_id: str | None
    label: str
    content: str | None
    status: str
    rubric_score: float | None
    ucb_score: float | None
    # Excluded from the hash so a node stays hashable although its metadata is a mapping.
    metadata: Mapping[str, Any] = field(hash=False)
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class NodeAtDepth:
    """A node of a subtree with its depth below the subtree's root (the root is at depth 0)."""

    node: Node
    depth: int


@dataclass(frozen=True, slots=True)
class BranchStats:
    """Statistics of the subtree under a node, the node included.

    ``scored_count``, ``mean_score`` and ``max_score`` count the nodes whose ``rubric_score`` is
    set; ``max_depth`` is the depth of the deepest node relative to ``node_id`` (0 for a leaf).
    """

    project_id: str
    node_id: str
    node_count: int
    alive_count: int
    scored_count: int
    mean_score: float | None
    max_score: float | None
    max_depth: int
    computed_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Principle:
    """One principle of a rubric version."""

    principle_id: int
    name: str
    description: str
    weight: float
    position: int


@dataclass(frozen=True, slots=True)
class Rubric:
    """One version of a rubric with its principles, ordered by position then id.

    ``latest`` is whether it is its rubric's highest version (when it was read).
    """

    project_id: str
    rubric_id: str
    version: int
    created_at: dt.datetime
    principles: tuple[Principle, ...]
    latest: bool = False


@dataclass(frozen=True, slots=True)
class Project:
    """A tree-search project."""

    project_id: str
    name: str
    config: Mapping[str, Any] = field(hash=False)
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ProjectNode:
    """A node of a loaded project with its scores on each principle of the project's latest
    rubric (empty when it has none, or the project no rubric)."""

    node: Node
    principle_scores: Mapping[str, float] = field(hash=False)


@dataclass(frozen=True, slots=True)
class LoadedProject:
    """A project with its rubrics (every version) and its whole tree, read in one snapshot.

    ``nodes`` are ordered by node_id; ``latest_rubric`` is the one their principle scores are of.
    """

    project: Project
    rubrics: tuple[Rubric, ...]
    latest_rubric: Rubric | None
    nodes: tuple[ProjectNode, ...]

    @property
    def roots(self) -> tuple[ProjectNode, ...]:
        """The nodes without a parent, by node_id."""
        return tuple(n for n in self.nodes if n.node.parent_id is None)

    def children_of(self) -> dict[str, tuple[ProjectNode, ...]]:
        """Each node's children by node_id (leaves have no entry), built in one pass."""
        children: dict[str, list[ProjectNode]] = {}
        for n in self.nodes:
            if n.node.parent_id is not None:
                children.setdefault(n.node.parent_id, []).append(n)
        return {parent: tuple(kids) for parent, kids in children.items()}


@dataclass(frozen=True, slots=True)
class LabeledSample:
    """A piece of human feedback on a node."""

    sample_id: uuid.UUID
    project_id: str
    node_id: str
    label: str
    text: str | None
    annotator: str | None
    metadata: Mapping[str, Any] = field(hash=False)
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Page(Generic[_Item, _Cursor]):
    """One page of a keyset-paginated read.

    ``next_cursor`` is what to pass as the read's cursor argument for the next page; it is None
    on the last page, so a walk never fetches an empty page after a full one.
    """

    items: tuple[_Item, ...]
    next_cursor: _Cursor | None


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim to verify; producers know it by ``external_id``."""

    id: uuid.UUID
    external_id: str
    content: str
    claim_type: str | None
    source: str | None
    metadata: Mapping[str, Any] = field(hash=False)
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def cursor(self) -> ClaimCursor:
        """The cursor of the page of claims of its type that follows this one."""
        return ClaimCursor(self.created_at, self.id)


@dataclass(frozen=True, slots=True)
class ClaimCursor:
    """Where a page of claims ends: the last one's (created_at, id)."""

    created_at: dt.datetime
    id: uuid.UUID


@dataclass(frozen=True, slots=True)
class VerificationCursor:
    """Where a page of recent verifications ends: the last one's (created_at, result_id)."""

    created_at: dt.datetime
    result_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Verification:
    """One framework's verdict on a claim. ``claim_id`` is the claim's external id."""

    result_id: uuid.UUID
    claim_id: str
    framework: str
    result: Mapping[str, Any] = field(hash=False)
    confidence: float
    evidence: Mapping[str, Any] = field(hash=False)
    processing_time_ms: int | None
    model_version: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def cursor(self) -> VerificationCursor:
        """The cursor of the page of recent verifications that follows this one."""
        return VerificationCursor(self.created_at, self.result_id)


@dataclass(frozen=True, slots=True)
class Consensus:
    """The standing consensus decision on a claim. ``claim_id`` is the claim's external id."""

    claim_id: str
    consensus_result: Mapping[str, Any] = field(hash=False)
    participating_frameworks: tuple[str, ...]
    consensus_type: str
    consensus_confidence: float
    decision_time_ms: int | None
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ClaimWithVerifications:
    """A claim, its verifications (oldest first, ties by result_id) and its consensus if any."""

    claim: Claim
    verifications: tuple[Verification, ...]
    consensus: Consensus | None


@dataclass(frozen=True, slots=True)
class TrainingCursor:
    """Where a page of training examples ends: the last one's (created_at, id)."""

    created_at: dt.datetime
    id: uuid.UUID


@dataclass(frozen=True, slots=True)
class TrainingExample:
    """A labeled example for training a framework's model."""

    id: uuid.UUID
    framework: str
    claim_id: str | None
    claim_text: str
    evidence: Mapping[str, Any] = field(hash=False)
    validity: bool
    confidence: float | None
    metadata: Mapping[str, Any] = field(hash=False)
    used_in_training: bool
    training_batch_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def cursor(self) -> TrainingCursor:
        """The cursor of the examples that follow this one."""
        return TrainingCursor(self.created_at, self.id)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A trained model version; ``framework`` None means it serves every framework."""

    id: uuid.UUID
    model_name: str
    framework: str | None
    version: str
    checkpoint_path: str
    metrics: Mapping[str, Any] = field(hash=False)
    training_config: Mapping[str, Any] = field(hash=False)
    is_active: bool
    activation_version: int
    activated_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def cursor(self) -> CheckpointCursor:
        """The cursor of the page of the model's checkpoints that follows this one."""
        return CheckpointCursor(self.created_at, self.id)


@dataclass(frozen=True, slots=True)
class CheckpointCursor:
    """Where a page of a model's checkpoints ends: the last one's (created_at, id)."""

    created_at: dt.datetime
    id: uuid.UUID


@dataclass(frozen=True, slots=True)
class ServiceHeartbeat:
    """The latest heartbeat of one instance of a service."""

    service_name: str
    instance_id: str
    status: str
    last_heartbeat: dt.datetime
    metadata: Mapping[str, Any] = field(hash=False)
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def cursor(self) -> ServiceCursor:
        """The cursor of the page of instances that follows this one."""
        return ServiceCursor(self.service_name, self.instance_id)


@dataclass(frozen=True, slots=True)
class ServiceCursor:
    """Where a page of service instances ends: the last one's (service_name, instance_id)."""

    service_name: str
    instance_id: str


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One entry of a task's transcript, identified by (phase, iteration, seq) within the task.

    ``seq`` is the producer's (0 or more), or, for an entry sent without one, derived from its
    content (negative; see :func:`pipeline.kinds.agent_tasks.derived_seq`).
    """

    task_id: str
    phase: str
    iteration: int
    seq: int
    role: str
    content: str
    timestamp: dt.datetime
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TranscriptHit:
    """A transcript entry matching a full-text query, with its ``ts_rank_cd`` rank."""

    entry: TranscriptEntry
    rank: float


@dataclass(frozen=True, slots=True)
class EventCursor:
    """Where a page of events ends: the last one's (occurred_at, event_id)."""

    occurred_at: dt.datetime
    event_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class EventRecord:
    """Something that happened in a task (``task_id`` None: in the system)."""

    event_id: uuid.UUID
    task_id: str | None
    event_type: str
    payload: Mapping[str, Any] = field(hash=False)
    occurred_at: dt.datetime
    duration_ms: int | None
    created_at: dt.datetime

    @property
    def cursor(self) -> EventCursor:
        """The cursor of the page of events that follows this one."""
        return EventCursor(self.occurred_at, self.event_id)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One insert, update or delete of an audited row.

    ``action`` is ``insert``, ``update`` or ``delete``; ``changes`` holds ``after`` (the row
    inserted), ``before`` (the row deleted), or both with the changed columns only. ``actor`` is
    who the job named, ``db_user`` and ``application`` the database role and client that made the
    change, ``transaction_id`` the transaction (shared by every change it made).
    """

    id: int
    entity_type: str
    entity_id: str
    action: str
    changes: Mapping[str, Any] = field(hash=False)
    actor: str | None
    db_user: str | None
    application: str | None
    transaction_id: int | None
    created_at: dt.datetime


def from_row(model: type[_Model], row: Mapping[Any, Any]) -> _Model:
    """The read model ``model`` of a row holding (at least) a column named after each field."""
    return model(**{f.name: row[f.name] for f in fields(model)})
