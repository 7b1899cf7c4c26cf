"""A database URL with ``?sslmode=disable`` (libpq's spelling, which asyncpg does not take as a
keyword) works for every command that connects: ``ready``, ``status`` and ``migrate``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.settings import Settings
from tests.e2e.conftest import run_pipeline

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("command", [["migrate"], ["ready"], ["status", "--json"]])
def test_a_urls_sslmode_disable_works(
    command: list[str], settings: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PIPELINE_DATABASE_URL"] = f"{settings.database_url}?sslmode=disable"
    env["PIPELINE_REDIS_URL"] = str(settings.redis_url)
    env["PIPELINE_QUEUE_NAME"] = settings.queue_name
    done = run_pipeline(env, *command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Error" not in done.stderr, done.stderr
    if command == ["ready"]:
        assert "?sslmode=disable: ok" in done.stdout, done.stdout
