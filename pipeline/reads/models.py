"""Read models: frozen snapshots of rows, so no ORM object (or lazy load) leaks out of a read."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Model = TypeVar("_Model", bound="DataclassInstance")


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
    """One version of a rubric with its principles, ordered by position then id."""

    project_id: str
    rubric_id: str
    version: int
    created_at: dt.datetime
    principles: tuple[Principle, ...]


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


def from_row(model: type[_Model], row: Mapping[Any, Any]) -> _Model:
    """The read model ``model`` of a row holding (at least) a column named after each field."""
    return model(**{f.name: row[f.name] for f in fields(model)})
