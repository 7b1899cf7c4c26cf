"""With ``PIPELINE_LOG_FORMAT=json`` every line a command writes is JSON, from the first: a worker
under both commands (started, given a job, stopped), ``pipeline migrate`` and the other commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from sqlalchemy.engine import make_url

from pipeline.postgres import redacted
from pipeline.settings import Settings
from tests.conftest import _admin
from tests.e2e.conftest import WorkerProcess, run_pipeline
from tests.integration.helpers import seed_tree

pytestmark = pytest.mark.e2e


def json_lines(output: str) -> list[dict[str, object]]:
    """Every line of ``output`` as JSON (fails on the first that is not)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"line {number} is not JSON: {line!r}\n{output}")
    return parsed


async def test_every_line_of_a_worker_is_json_from_the_first(
    start_worker: Callable[..., WorkerProcess], producer: ArqRedis, mode: str
) -> None:
    worker = start_worker(PIPELINE_LOG_LEVEL="INFO")
    worker.wait_started()
    await seed_tree(producer, "p", ["a"])
    bad = await producer.enqueue_job("update_scores", project_id="p", scores="not a list")
    assert bad is not None
    with pytest.raises(Exception):  # noqa: B017 - its dead letter is what the log must show
        await bad.result(timeout=30)
    assert worker.stop(signal.SIGTERM) == 0
    events = [str(line.get("event")) for line in json_lines(worker.output())]
    assert events[0].startswith("Starting worker for"), events[:3]  # arq's own first line
    assert "worker started" in events and "batch flushed" in events
    assert "job dead-lettered" in events and "worker stopped" in events
    assert any(event.startswith("shutdown on SIGTERM") for event in events)  # arq's last ones


def test_migrate_and_the_other_commands_log_json(settings: Settings) -> None:
    env = {
        **os.environ,
        "PIPELINE_DATABASE_URL": str(settings.database_url),
        "PIPELINE_REDIS_URL": str(settings.redis_url),
        "PIPELINE_LOG_FORMAT": "json",
        "PIPELINE_LOG_LEVEL": "INFO",
    }

    def stderr_of(*args: str) -> str:
        done = run_pipeline(env, *args)
        assert done.returncode == 0, done.stderr
        return done.stderr

    migrated = json_lines(stderr_of("migrate"))  # alembic's lines, through the pipeline's handler
    assert any(line.get("logger", "").startswith("alembic") for line in migrated), migrated
    for command in (["ready"], ["status"], ["dead-letters", "list"]):
        output = stderr_of(*command)
        if output.strip():
            json_lines(output)


def test_migrate_creating_its_database_writes_json_only(settings: Settings, tmp_path: Path) -> None:
    """The database's creation and Alembic's lines are JSON, nothing goes to stdout, and
    ``PIPELINE_LOG_FORMAT`` counts from a ``.env`` file as from the environment."""
    name = f"pipeline_test_created_{uuid.uuid4().hex[:10]}"
    url = make_url(str(settings.database_url)).set(database=name)
    (tmp_path / ".env").write_text("PIPELINE_LOG_FORMAT=json\nPIPELINE_LOG_LEVEL=INFO\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PIPELINE_DATABASE_URL"] = url.render_as_string(hide_password=False)
    try:
        done = run_pipeline(env, "migrate", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        lines = json_lines(done.stderr)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    created = [line for line in lines if line["event"] == "database created"]
    assert [line["database"] for line in created] == [redacted(url)]
    assert any(str(line.get("logger", "")).startswith("alembic") for line in lines), lines
    assert any("Running upgrade" in str(line["event"]) for line in lines), lines
