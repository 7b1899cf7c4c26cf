"""The logging configuration a test found, put back: ``pipeline.logs.configure`` (a worker's
start-up, a command run in-process, a migration) installs a handler that writes to the test's
captured stderr, which is closed once its capture ends."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

CONFIGURED = ["", "arq", "arq.worker", "arq.jobs", "arq.connections", "alembic.runtime.plugins"]


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
        seen.append(f"{sys.exc_info()[1]!r} writing {record.getMessage()!r}")
        original(handler, record)

    logging.Handler.handleError = handle_error  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        logging.Handler.handleError = original  # type: ignore[method-assign]
