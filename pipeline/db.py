"""Engines and URLs: built from settings at start-up, never at import time."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pipeline.settings import Settings


def async_url(url: object) -> URL:
    """The URL with the asyncpg driver, whatever driver (or none) it named."""
    parsed = make_url(str(url))
    return parsed.set(drivername="postgresql+asyncpg")


def redacted(url: object) -> str:
    """The URL fit for a log line: the password, if any, replaced by ``***``."""
    return make_url(str(url)).render_as_string(hide_password=True)


def create_engine(settings: Settings, *, read: bool = False) -> AsyncEngine:
    """An asyncpg engine sized by settings; ``read=True`` targets the replica if one is set."""
    url = settings.read_database_url if read and settings.read_database_url else None
    return create_async_engine(
        async_url(url or settings.database_url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
    )
