"""The logging configuration a test found, put back: ``pipeline.logs.configure`` (a worker's
start-up, a command run in-process, a migration) installs a handler that writes to the test's
captured stderr, which is closed once its capture ends."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pipeline.logs import CONFIGURED


@contextmanager
def logging_restored() -> Iterator[None]:
    """The handlers, levels and propagation of the loggers ``pipeline.logs`` configures, put back
    on the way out."""
    loggers = [logging.getLogger(name) for name in CONFIGURED]
    saved = [(log, log.handlers[:], log.level, log.propagate) for log in loggers]
    try:
        yield
    finally:
        for log, handlers, level, propagate in saved:
            log.handlers[:] = handlers
            log.setLevel(level)
            log.propagate = propagate


@contextmanager
def failed_emits() -> Iterator[list[str]]:
    """Every log record a handler failed to write (``Handler.handleError``, which only prints
    ``--- Logging error ---``), as the error's text, while inside."""
    seen: list[str] = []
    original = logging.Handler.handleError

    def handle_error(handler: logging.Handler, record: logging.LogRecord) -> None:
        # the record's format string: formatting it may be what failed
        seen.append(f"{sys.exc_info()[1]!r} writing {record.msg!r}")
        original(handler, record)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging.Handler, "handleError", handle_error)
        yield seen
