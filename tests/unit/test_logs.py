"""Logging: arq's per-job INFO lines are dropped, its warnings and errors kept; URLs redacted."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import socket

import pytest
import structlog

from pipeline import logs
from pipeline.postgres import redacted
from pipeline.settings import Settings


def test_arq_job_lines_are_dropped_but_failures_kept(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure(Settings(log_level="INFO"))
    arq_records = logging.getLogger("arq.worker")
    arq_records.info("%6.2fs → %s(%s)%s", 0.01, "abc:update_scores", "…", "")
    arq_records.info("%6.2fs ← %s ● %s", 0.01, "abc:update_scores", "")
    arq_records.info("Starting worker for %d functions", 7)
    arq_records.error("%6.2fs ! %s failed, %s: %s", 0.01, "abc:update_scores", "X", "boom")
    err = capfd.readouterr().err
    assert "abc:update_scores(" not in err and "●" not in err
    assert "Starting worker for 7 functions" in err
    assert "abc:update_scores failed, X: boom" in err


def test_urls_are_logged_without_their_password() -> None:
    url = "postgresql+asyncpg://svc:s3cret@db.internal:5432/pipeline"
    assert redacted(url) == "postgresql+asyncpg://svc:***@db.internal:5432/pipeline"
    assert "s3cret" not in redacted("redis://:s3cret@cache:6379/0")


def test_a_worker_id_is_made_once_and_put_on_every_line() -> None:
    ctx: dict[str, object] = {}
    try:
        worker_id = logs.bind_worker(ctx)
        assert logs.bind_worker(ctx) == worker_id == ctx["worker_id"]
        assert structlog.contextvars.get_contextvars()["worker_id"] == worker_id
    finally:
        structlog.contextvars.clear_contextvars()
    host, pid, suffix = worker_id.rsplit("-", 2)
    assert host == socket.gethostname() and pid == str(os.getpid()) and len(suffix) == 6


def test_arq_job_lines_are_kept_when_asked_for(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure(Settings(log_level="INFO", log_jobs=True, log_format="json"))
    logging.getLogger("arq.worker").info("%6.2fs ← %s ● %s", 0.01, "abc:update_scores", "")
    (line,) = capfd.readouterr().err.splitlines()
    assert json.loads(line)["event"] == "  0.01s ← abc:update_scores ● "


def test_arqs_dict_config_installs_the_pipelines_handler(capfd: pytest.CaptureFixture[str]) -> None:
    """What ``arq … --custom-log-dict pipeline.logs.ARQ_LOGGING`` does before the worker starts:
    arq's own first lines come out as JSON, with a failure's ``extra``."""
    logging.config.dictConfig(logs.ARQ_LOGGING)
    arq_records = logging.getLogger("arq.worker")
    arq_records.info("Starting worker for %d functions: %s", 2, "a, b")
    arq_records.error("%6.2fs ! %s failed", 0.01, "abc:f", extra={"extra": {"node": "n1"}})
    first, failure = (json.loads(line) for line in capfd.readouterr().err.splitlines())
    assert first["event"] == "Starting worker for 2 functions: a, b" and first["level"] == "info"
    assert failure["extra"] == {"node": "n1"} and failure["level"] == "error"
