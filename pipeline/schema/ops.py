"""Operational tables: the dead-letter store and the audit log."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, Integer, LargeBinary, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.schema.base import Base, created_at, updated_at


class DeadLetter(Base):
    """A job that can never succeed as sent: its payload (or, when it never decoded, its raw
    bytes), why it failed, and how often."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(255), unique=True)
    function: Mapped[str] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]]
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
    error_class: Mapped[str] = mapped_column(String(255))
    error_message: Mapped[str] = mapped_column(Text)
    tries: Mapped[int] = mapped_column(Integer, server_default="1")
    first_seen_at: Mapped[dt.datetime] = created_at()
    last_seen_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[dt.datetime] = updated_at()

    __table_args__ = (Index("ix_dead_letters_function_last_seen", "function", "last_seen_at"),)


class AuditLog(Base):
    """One insert, update or delete of a row of an audited table, written by a trigger in the
    transaction of the change (see :mod:`pipeline.schema.audit`)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(50))
    entity_id: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(50))
    changes: Mapped[dict[str, Any]]
    actor: Mapped[str | None] = mapped_column(String(255))
    db_user: Mapped[str | None] = mapped_column(Text)
    application: Mapped[str | None] = mapped_column(Text)
    transaction_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = created_at()

    __table_args__ = (
        Index("ix_audit_log_entity", "entity_type", "entity_id", "id"),
        Index("ix_audit_log_created_at", "created_at", postgresql_using="brin"),
    )
