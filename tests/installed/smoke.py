"""The installed package, not a checkout, runs: ``pipeline migrate`` creates and migrates a new
database, then ``pipeline worker`` and ``arq pipeline.WorkerSettings`` each run one
``upsert_project`` job to its row. Run by ``./run test`` with the interpreter of a virtual
environment the wheel was installed into (not editable), from a directory outside the checkout;
exits non-zero on the first thing that goes wrong.

Needs PostgreSQL (``PIPELINE_TEST_ADMIN_URL``, default the local server) and Redis
(``PIPELINE_TEST_REDIS_URL``); the database it creates is dropped, the Redis database it claims
(as the test sessions claim theirs) is flushed and released.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

import pipeline

ADMIN_URL = os.environ.get(
    "PIPELINE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_BASE_URL = os.environ.get("PIPELINE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
SESSION_KEY = "pipeline:test-session"  # the key tests/conftest.py claims a Redis database by
BIN = Path(sys.executable).parent
TIMEOUT_S = 120


def say(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def check_installed() -> None:
    """The package imported is the installed copy in site-packages, not a checkout's."""
    where = Path(pipeline.__file__).resolve()
    site = Path(sysconfig.get_path("purelib")).resolve()
    assert where.is_relative_to(site), f"pipeline imported from {where}, not from {site}"
    say(f"pipeline imported from {where.parent}")


async def claim_redis_db(token: str) -> str:
    """A Redis database (1-15) no test session holds."""
    for db in range(15, 0, -1):
        client = aioredis.from_url(f"{REDIS_BASE_URL}/{db}")
        try:
            if await client.set(SESSION_KEY, token, nx=True, ex=3600):
                return f"{REDIS_BASE_URL}/{db}"
        finally:
            await client.aclose()
    raise SystemExit("smoke: every Redis database 1-15 is held by a test session")


async def release_redis_db(url: str, token: str) -> None:
    client = aioredis.from_url(url)
    try:
        if await client.get(SESSION_KEY) == token.encode():
            await client.flushdb()
    finally:
        await client.aclose()


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run(command: list[str], env: dict[str, str]) -> None:
    """Run a command of the installed package to its end, within the time allowed."""
    say("$ " + " ".join(command))
    done = subprocess.run(command, env=env, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{command[0]} exited {done.returncode}"


async def enqueue_project(project_id: str) -> None:
    redis = await pipeline.create_pool()
    try:
        job = await redis.enqueue_job("upsert_project", project_id=project_id, name="smoke")
        assert job is not None, "the job was not enqueued"
    finally:
        await redis.aclose()


async def project_name(url: str, project_id: str) -> str | None:
    conn = await asyncpg.connect(url)
    try:
        name = await conn.fetchval("SELECT name FROM projects WHERE project_id = $1", project_id)
    finally:
        await conn.close()
    return None if name is None else str(name)


async def wait_for_row(url: str, project_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while await project_name(url, project_id) != "smoke":
        assert time.monotonic() < deadline, f"no row for {project_id} in {TIMEOUT_S} s"
        await asyncio.sleep(0.1)


def main() -> int:
    check_installed()
    token = uuid.uuid4().hex
    database = f"pipeline_test_installed_{token[:10]}"
    database_url = make_url(ADMIN_URL).set(database=database)
    url = database_url.render_as_string(hide_password=False)
    redis_url = asyncio.run(claim_redis_db(token))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(
        PIPELINE_DATABASE_URL=url,
        PIPELINE_REDIS_URL=redis_url,
        PIPELINE_QUEUE_NAME=f"pipeline:smoke:{token[:10]}",
        PIPELINE_LOG_FORMAT="console",
    )
    os.environ.update(env)  # for this process's own pool, which reads the same settings
    try:
        run([str(BIN / "pipeline"), "migrate"], env)  # creates the database
        workers = {
            "pipeline worker": [str(BIN / "pipeline"), "worker", "--burst"],
            "arq pipeline.WorkerSettings": [str(BIN / "arq"), "pipeline.WorkerSettings", "--burst"],
        }
        for n, (name, command) in enumerate(workers.items()):
            project_id = f"smoke-{n}"
            asyncio.run(enqueue_project(project_id))
            run(command, env)  # --burst: exits once the queue is empty
            asyncio.run(wait_for_row(url, project_id))
            say(f"{name} wrote project {project_id}")
    finally:
        asyncio.run(release_redis_db(redis_url, token))
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    say("ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
