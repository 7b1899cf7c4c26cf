"""Schema migrations: ``pipeline migrate`` runs Alembic's ``upgrade head`` (creating the database
first if it does not exist yet, which is what a developer on a fresh machine wants).

The migrations ship inside the package (``pipeline/migrations``) and Alembic's configuration is
built here, so an installed package migrates with no ``alembic.ini`` and no checkout; the
top-level ``alembic.ini`` is only for the ``alembic`` command run from a checkout.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from pipeline.postgres import async_url, redacted, with_tls
from pipeline.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"

log = structlog.get_logger("pipeline.migrate")


def alembic_config(url: str, *, configure_logging: bool = True) -> Config:
    """Alembic's configuration for the database at ``url``: the package's migrations, the
    pipeline's logging (``migrations/env.py``), no file read."""
    config = Config()
    # ConfigParser interpolates "%": a path holding one must not be read as a reference.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = async_url(url).render_as_string(hide_password=False)
    config.attributes["configure_logger"] = configure_logging
    return config


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it is missing; True if it was created."""
    target = make_url(url)
    name = target.database
    if not name:
        raise ValueError(f"no database named in {redacted(url)}")
    admin, tls = with_tls(target.set(drivername="postgresql", database="postgres"), Settings())
    conn = await asyncpg.connect(  # type: ignore[no-untyped-call]
        admin.render_as_string(hide_password=False), ssl=tls, server_settings={"TimeZone": "UTC"}
    )
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await conn.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
        return True
    finally:
        await conn.close()


def upgrade(
    url: str, revision: str = "head", *, create: bool = True, configure_logging: bool = True
) -> None:
    """Bring the database at ``url`` to ``revision``."""
    if create and asyncio.run(ensure_database(url)):
        log.info("database created", database=redacted(url))
    command.upgrade(alembic_config(url, configure_logging=configure_logging), revision)


def downgrade(url: str, revision: str, *, configure_logging: bool = True) -> None:
    """Take the database at ``url`` down to ``revision`` (``base`` removes everything)."""
    command.downgrade(alembic_config(url, configure_logging=configure_logging), revision)
