"""PostgreSQL connections: engines built at start-up (never at import time), TLS from the
settings, and URLs fit for logs."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from ssl import SSLContext
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pipeline.schema.audit import CHANGES_SETTING, QUIET_SETTING, SCORE_COLUMNS
from pipeline.settings import Settings


def async_url(url: object) -> URL:
    """The URL with the asyncpg driver, whatever driver (or none) it named."""
    parsed = make_url(str(url))
    return parsed.set(drivername="postgresql+asyncpg")


def redacted(url: object) -> str:
    """The URL fit for a log line: the password, if any, replaced by ``***``."""
    return make_url(str(url)).render_as_string(hide_password=True)


def create_engine(
    settings: Settings, *, read: bool = False, changes: Sequence[str] = ()
) -> AsyncEngine:
    """An asyncpg engine sized by settings; ``read=True`` targets the replica if one is set.

    Every statement gets a plan for its own parameters (``plan_cache_mode=force_custom_plan``):
    the write path sends arrays whose sizes range from one row to thousands, and the generic plan
    PostgreSQL switches a prepared statement to after five runs cannot see them. Statements stay
    prepared. Every connection runs in UTC and uses the TLS settings (see :func:`connect_args`).

    ``changes`` (``table.column`` names) is for a writer whose updates change nothing else: the
    audit trigger then skips the first update of each transaction that changes quiet columns
    only without reading its rows (see :data:`pipeline.schema.audit.CHANGES_SETTING`).
    """
    url = settings.read_database_url if read and settings.read_database_url else None
    engine_url, ssl = with_tls(async_url(url or settings.database_url), settings)
    return create_async_engine(
        engine_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
        connect_args=connect_args(settings, changes=changes, ssl=ssl),
    )


def connect_args(
    settings: Settings, *, changes: Sequence[str] = (), ssl: str | SSLContext | None = None
) -> dict[str, Any]:
    """asyncpg's connect arguments for every connection the pipeline opens: its session
    settings, the connect timeout, and TLS (``ssl``, else the settings' own)."""
    return {
        "server_settings": server_settings(settings, changes),
        # asyncpg waits 60 s by default: an unreachable host would outlast every job's wait.
        "timeout": settings.db_connect_timeout_s,
        "ssl": ssl if ssl is not None else ssl_argument(settings.db_ssl_mode, settings),
    }


def with_tls(url: URL, settings: Settings) -> tuple[URL, str | SSLContext]:
    """The URL without libpq's TLS parameters (asyncpg would take them for unknown keyword
    arguments), and asyncpg's ``ssl`` argument from them or the settings."""
    mode = url.query.get("sslmode")
    root = url.query.get("sslrootcert")
    url = url.difference_update_query(["sslmode", "sslrootcert"])
    if isinstance(mode, tuple) or isinstance(root, tuple):
        raise ValueError("the database URL gives sslmode or sslrootcert twice")
    if mode is None or mode == settings.db_ssl_mode:
        mode = settings.db_ssl_mode
    elif settings.db_ssl_mode != "prefer":
        raise ValueError(
            f"the database URL says sslmode={mode} but PIPELINE_DB_SSL_MODE is "
            f"{settings.db_ssl_mode}: set one of them"
        )
    if root is not None:
        settings = settings.model_copy(update={"db_ssl_root_cert": Path(root)})
    return url, ssl_argument(mode, settings)


def ssl_argument(mode: str, settings: Settings) -> str | SSLContext:
    """asyncpg's ``ssl`` argument for an sslmode: its own mode name, or for ``verify-full`` a
    context that checks the certificate against the configured CA and the host name."""
    if mode in ("disable", "allow", "prefer", "require"):
        return mode
    if mode not in ("verify-ca", "verify-full"):
        raise ValueError(f"sslmode must be disable, prefer, require or verify-full, not {mode!r}")
    cafile = settings.db_ssl_root_cert
    if cafile is not None and not cafile.is_file():
        raise ValueError(f"PIPELINE_DB_SSL_ROOT_CERT: no such file: {cafile}")
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    context.check_hostname = mode == "verify-full"
    return context


def server_settings(settings: Settings, changes: Sequence[str] = ()) -> dict[str, str]:
    """The session settings of every connection the pipeline opens to PostgreSQL."""
    return {
        "plan_cache_mode": "force_custom_plan",
        # timestamptz values then reach every reader and writer in one zone, whatever the
        # server's default.
        "TimeZone": "UTC",
        **audit_settings(settings, changes),
    }


def audit_settings(settings: Settings, changes: Sequence[str] = ()) -> dict[str, str]:
    """The session settings the audit trigger reads: who is writing, what not to audit, and
    (``changes``) the only columns this session's updates change, if it can promise that."""
    found = {
        # Recorded in each audit row, telling the pipeline's changes from anyone else's.
        "application_name": "pipeline",
        QUIET_SETTING: "" if settings.audit_score_updates else ",".join(SCORE_COLUMNS),
    }
    if changes:
        found[CHANGES_SETTING] = ",".join(changes)
    return found
