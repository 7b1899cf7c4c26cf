"""Logging: arq's per-job INFO lines are dropped, its warnings and errors kept; URLs redacted."""

from __future__ import annotations

import logging

import pytest

from pipeline import logs
from pipeline.db import redacted


def test_arq_job_lines_are_dropped_but_failures_kept(capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO")
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
