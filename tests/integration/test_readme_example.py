"""The README's producer example works as pasted, on a fresh database with a worker running:
run as a program of its own against this test's services, under both worker modes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from arq.worker import Worker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    """The README's first Python block."""
    found = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert found is not None, "the README has no Python example"
    return found.group(1)


async def test_the_readme_example_writes_what_it_says(
    settings: Settings, worker_of: Callable[..., Worker], engine: AsyncEngine
) -> None:
    worker = worker_of(burst=False)
    running = asyncio.create_task(worker.main())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(
        PIPELINE_DATABASE_URL=str(settings.database_url),
        PIPELINE_REDIS_URL=str(settings.redis_url),
        PIPELINE_QUEUE_NAME=settings.queue_name,
    )
    try:
        done = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            example(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(done.communicate(), 60)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert done.returncode == 0, err.decode()
    assert re.search(r"rows=1 applied=1 unchanged=0", out.decode()), out.decode()
    async with engine.connect() as conn:
        project = await conn.scalar(text("SELECT name FROM projects WHERE project_id = 'proj-1'"))
        node = (
            await conn.execute(
                text(
                    "SELECT label, rubric_score, ucb_score FROM nodes "
                    "WHERE project_id = 'proj-1' AND node_id = 'n-17'"
                )
            )
        ).one()
    assert (project, tuple(node)) == ("Topics", ("All", 0.82, 1.4))
