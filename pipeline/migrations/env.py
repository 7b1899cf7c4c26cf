"""Alembic environment: migrates the database named by settings (or by ``-x url=…``)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from pipeline import logs
from pipeline.postgres import async_url, connect_args, with_tls
from pipeline.schema import metadata
from pipeline.settings import Settings

config = context.config
if config.attributes.get("configure_logger", True):
    logs.configure()  # the pipeline's format (JSON if asked for), also under plain `alembic`


def _url() -> str:
    explicit = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    url = async_url(explicit or Settings().database_url)
    return url.render_as_string(hide_password=False)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    settings = Settings()
    url, tls = with_tls(async_url(_url()), settings)
    arguments = connect_args(settings, ssl=tls)
    # Audited as a migration, not as the pipeline's own writes.
    arguments["server_settings"]["application_name"] = "pipeline migrate"
    engine = create_async_engine(url, poolclass=NullPool, connect_args=arguments)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
