"""Readiness: fails while PostgreSQL (or Redis) is unreachable, recovers by itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from pipeline.health import readiness
from pipeline.settings import Settings


class Proxy:
    """A TCP proxy to PostgreSQL that the test can take down and bring back on the same port."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5432)
        self.links.update({writer, up_writer})
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for link in self.links:
            link.close()
        await self.server.wait_closed()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    proxy = Proxy()
    await proxy.up()
    yield proxy
    if proxy.server is not None and proxy.server.is_serving():
        await proxy.down()


async def test_readiness_flips_while_postgres_is_unreachable_and_recovers(
    proxy: Proxy, settings: Settings, database_url: str
) -> None:
    through_proxy = (
        make_url(database_url).set(port=proxy.port).render_as_string(hide_password=False)
    )
    settings = settings.model_copy(update={"database_url": through_proxy})
    assert [c.error for c in await readiness(settings)] == [None, None]

    await proxy.down()
    postgres, redis = await readiness(settings)
    assert postgres.error is not None and redis.error is None

    await proxy.up()  # the same port again
    assert [c.error for c in await readiness(settings)] == [None, None]


def test_the_cli_exit_code_and_no_password_in_its_output(settings: Settings) -> None:
    def ready(**env: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline.cli", "ready"]
        return subprocess.run(
            command, env={**os.environ, **env}, capture_output=True, text=True, timeout=30
        )

    live = ready(
        PIPELINE_DATABASE_URL=str(settings.database_url), PIPELINE_REDIS_URL=str(settings.redis_url)
    )
    assert live.returncode == 0, live.stdout + live.stderr
    assert live.stdout.count(": ok") == 2

    down = ready(
        PIPELINE_DATABASE_URL="postgresql://svc:s3cret@127.0.0.1:1/x",
        PIPELINE_REDIS_URL="redis://:hunter2@127.0.0.1:2/0",
    )
    assert down.returncode == 1
    assert down.stdout.count("unreachable") == 2
    assert "s3cret" not in down.stdout + down.stderr and "hunter2" not in down.stdout + down.stderr
