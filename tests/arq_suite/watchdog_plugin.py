"""pytest plugin for arq's suite: each test's outcome as it ends, and an end to a hung test.

pytest-timeout (10 s in arq's settings) fails a test by raising in it, which a worker that
swallows the exception, or SIGINT, survives: the run then hangs and its junit report is never
written. This plugin appends one JSON line per event to ``--progress`` (the tests collected, the
Redis claim, each test's outcome) and, when a test is still running ``--hard-timeout`` seconds
after it started, records it as hung, releases the session's Redis database and ends the
process with ``HUNG_EXIT``. ``run.py`` then takes the finished tests' outcomes from the progress
file and runs the tests that did not run yet in a new session.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import local_redis
import pytest

HUNG_EXIT = 70


def _reason(text: str) -> str:
    """A failure's first two ``E`` lines (as run.py takes them from junit), or its last line."""
    lines = [line[1:].strip() for line in text.splitlines() if line[:2] == "E "]
    found = " | ".join(lines[:2]) or (text.strip().splitlines() or [""])[-1]
    return " ".join(found.split())[:240]


class Watchdog:
    """Writes the progress file and ends the session when a test hangs."""

    def __init__(self, progress: Path, hard_timeout_s: float) -> None:
        self.progress = progress
        self.hard_timeout_s = hard_timeout_s
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None
        self.outcomes: dict[str, tuple[str, str]] = {}
        self.claim_written = False

    def write(self, event: dict[str, Any]) -> None:
        with self.lock, self.progress.open("a") as out:
            out.write(json.dumps(event) + "\n")

    def hung(self, nodeid: str) -> None:
        self.write({"hung": nodeid, "seconds": self.hard_timeout_s})
        claim = local_redis.current_claim
        if claim is not None:
            local_redis.release_redis_db(claim)
        os._exit(HUNG_EXIT)

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.write({"collected": [item.nodeid for item in session.items]})

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.timer = threading.Timer(self.hard_timeout_s, self.hung, args=(nodeid,))
        self.timer.daemon = True
        self.timer.start()

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        status, message = self.outcomes.get(report.nodeid, ("passed", ""))
        if report.failed and status in ("passed", "skipped"):
            status = "failed" if report.when == "call" else "error"
            message = _reason(report.longreprtext)
        elif report.skipped and status == "passed":
            status = "skipped"
        self.outcomes[report.nodeid] = (status, message)

    @pytest.hookimpl
    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
        status, message = self.outcomes.pop(nodeid, ("passed", ""))
        self.write({"test": nodeid, "status": status, "message": message})
        claim = local_redis.current_claim
        if claim is not None and not self.claim_written:
            self.write({"claim": claim.url, "token": claim.token})
            self.claim_written = True


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("watchdog")
    group.addoption("--progress", default=None, help="append each test's outcome to this file")
    group.addoption(
        "--hard-timeout",
        type=float,
        default=40.0,
        help="end the session when a test is still running this many seconds after it started",
    )


def pytest_configure(config: pytest.Config) -> None:
    progress = config.getoption("--progress")
    if progress:
        watchdog = Watchdog(Path(progress), config.getoption("--hard-timeout"))
        config.pluginmanager.register(watchdog, "arq-suite-watchdog")
