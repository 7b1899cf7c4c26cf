"""The declarative base every table derives from, and column helpers shared by the tables."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, DateTime, MetaData, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base; its metadata is what Alembic compares migrations against."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: DateTime(timezone=True), dict[str, Any]: JSONB}


def created_at() -> Mapped[dt.datetime]:
    """A ``created_at timestamptz`` column filled by the database."""
    return mapped_column(server_default=func.now())


def updated_at() -> Mapped[dt.datetime]:
    """An ``updated_at timestamptz`` column: the pipeline's updates set it, and a trigger
    (:data:`pipeline.schema.audit.TOUCHED`) sets it for any other writer that does not."""
    return mapped_column(server_default=func.now())


def version() -> Mapped[int]:
    """A last-write-wins version: the row keeps the highest one it has seen."""
    return mapped_column(BigInteger, server_default="0")
