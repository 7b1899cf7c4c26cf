"""Tables of the taxonomy/rubric domain: projects, rubrics, the node tree and what hangs off it."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.schema.base import Base, created_at, updated_at, version

NODE_STATUSES = ("alive", "expanded", "pruned", "terminal", "failed")
KEY = String(255)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Project(Base):
    """A tree-search project; its config is free-form."""

    __tablename__ = "projects"

    project_id: Mapped[str] = mapped_column(KEY, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    version: Mapped[int] = version()
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()


class Rubric(Base):
    """One immutable version of a rubric."""

    __tablename__ = "rubrics"

    project_id: Mapped[str] = mapped_column(
        KEY, ForeignKey("projects.project_id", ondelete="CASCADE"), primary_key=True
    )
    rubric_id: Mapped[str] = mapped_column(KEY, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = created_at()

    __table_args__ = (CheckConstraint("version >= 0", name="version_non_negative"),)


class RubricPrinciple(Base):
    """A principle of one rubric version, with a real identity of its own."""

    __tablename__ = "rubric_principles"

    principle_id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    project_id: Mapped[str] = mapped_column(KEY)
    rubric_id: Mapped[str] = mapped_column(KEY)
    rubric_version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(KEY)
    description: Mapped[str] = mapped_column(Text, server_default="")
    weight: Mapped[float] = mapped_column(Double, server_default="1")
    position: Mapped[int] = mapped_column(Integer, server_default="0")

    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "rubric_id", "rubric_version"],
            ["rubrics.project_id", "rubrics.rubric_id", "rubrics.version"],
            ondelete="CASCADE",
        ),
        UniqueConstraint("project_id", "rubric_id", "rubric_version", "name"),
        CheckConstraint("weight >= 0", name="weight_non_negative"),
    )


class Node(Base):
    """A node of a project's taxonomy tree; scores and status live here, each with a version."""

    __tablename__ = "nodes"

    project_id: Mapped[str] = mapped_column(
        KEY, ForeignKey("projects.project_id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[str] = mapped_column(KEY, primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(KEY)
    label: Mapped[str] = mapped_column(Text)
    content: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default="alive")
    status_version: Mapped[int] = version()
    rubric_score: Mapped[float | None] = mapped_column(Double)
    rubric_score_version: Mapped[int] = version()
    ucb_score: Mapped[float | None] = mapped_column(Double)
    ucb_score_version: Mapped[int] = version()
    # The version of the definition (label, content, metadata, parent); last of the versioned
    # columns, since its name hides the helper in this class body.
    version: Mapped[int] = version()
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[dt.datetime] = created_at()
    updated_at: Mapped[dt.datetime] = updated_at()

    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "parent_id"], ["nodes.project_id", "nodes.node_id"], ondelete="CASCADE"
        ),
        CheckConstraint(_in("status", NODE_STATUSES), name="status_known"),
        CheckConstraint("parent_id IS NULL OR parent_id <> node_id", name="not_own_parent"),
        Index("ix_nodes_project_id_parent_id", "project_id", "parent_id"),
        Index(
            "ix_nodes_alive_ucb",
            "project_id",
            text("ucb_score DESC NULLS LAST"),
            postgresql_where=text("status = 'alive'"),
        ),
        Index("ix_nodes_project_id_ucb", "project_id", text("ucb_score DESC NULLS LAST")),
    )


class PrincipleScore(Base):
    """The score of one node on one principle of one rubric version; written once, never changed."""

    __tablename__ = "principle_scores"

    project_id: Mapped[str] = mapped_column(KEY, primary_key=True)
    node_id: Mapped[str] = mapped_column(KEY, primary_key=True)
    principle_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("rubric_principles.principle_id", ondelete="CASCADE"),
        primary_key=True,
    )
    rubric_id: Mapped[str] = mapped_column(KEY)
    rubric_version: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Double)
    created_at: Mapped[dt.datetime] = created_at()

    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "node_id"], ["nodes.project_id", "nodes.node_id"], ondelete="CASCADE"
        ),
        Index(
            "ix_principle_scores_rubric_node",
            "project_id",
            "rubric_id",
            "rubric_version",
            "node_id",
        ),
    )


class LabeledSample(Base):
    """Human feedback on a node."""

    __tablename__ = "labeled_samples"

    sample_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    project_id: Mapped[str] = mapped_column(KEY)
    node_id: Mapped[str] = mapped_column(KEY)
    label: Mapped[str] = mapped_column(Text)
    text_: Mapped[str | None] = mapped_column("text", Text)
    annotator: Mapped[str | None] = mapped_column(KEY)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[dt.datetime] = created_at()

    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "node_id"], ["nodes.project_id", "nodes.node_id"], ondelete="CASCADE"
        ),
        Index("ix_labeled_samples_project_id_node_id", "project_id", "node_id"),
    )


class BranchStats(Base):
    """Cached statistics of the subtree under a node; the write path deletes stale rows."""

    __tablename__ = "branch_stats"

    project_id: Mapped[str] = mapped_column(KEY, primary_key=True)
    node_id: Mapped[str] = mapped_column(KEY, primary_key=True)
    node_count: Mapped[int] = mapped_column(Integer)
    alive_count: Mapped[int] = mapped_column(Integer)
    scored_count: Mapped[int] = mapped_column(Integer)
    mean_score: Mapped[float | None] = mapped_column(Double)
    max_score: Mapped[float | None] = mapped_column(Double)
    max_depth: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[dt.datetime] = created_at()

    __table_args__ = (
        ForeignKeyConstraint(
            ["project_id", "node_id"], ["nodes.project_id", "nodes.node_id"], ondelete="CASCADE"
        ),
    )


def branch_stats_lock_key(project_sql: str) -> str:
    """SQL for the advisory-lock key guarding a project's cached branch statistics.

    Writers that change nodes hold it shared (``pg_advisory_xact_lock_shared``) while they delete
    stale ``branch_stats`` rows; a reader that computes and stores statistics holds it exclusive
    (``pg_advisory_xact_lock``). So a reader never stores statistics computed from a snapshot that
    misses a concurrent writer's change: it waits for writers in flight, and writers after it see
    and delete its row.
    """
    return f"hashtextextended('pipeline.branch_stats:' || {project_sql}, 0)"


def node_updates_lock_key(project_sql: str) -> str:
    """SQL for the advisory-lock key a batch holds while it updates a project's nodes.

    Batches take it (``pg_advisory_xact_lock``, projects in order) before their score and status
    updates, so two batches never update one project's nodes at once and never wait on each
    other's row locks in opposite orders.
    """
    return f"hashtextextended('pipeline.node_updates:' || {project_sql}, 0)"
