"""Logging: structlog for the pipeline's own lines, stdlib (arq, alembic) routed through it.

JSON lines when stderr is not a terminal (or ``PIPELINE_LOG_FORMAT=json``), readable colours
otherwise. arq's per-job INFO lines are dropped: at thousands of jobs a second they cost more
than the jobs; the pipeline logs one line per flushed batch instead.

Every line a worker writes carries its ``worker_id`` (:func:`bind_worker`), so the lines of many
replicas can be told apart once they are collected in one place.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from typing import Any

import structlog


class _DropArqJobLines(logging.Filter):
    """arq formats every per-job INFO line as ``'%6.2fs …'``; errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith("%6.2fs"))


def configure(level: str = "INFO") -> None:
    """Configure structlog and the stdlib root logger once per process."""
    as_json = os.environ.get("PIPELINE_LOG_FORMAT", "").lower() == "json" or not sys.stderr.isatty()
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if as_json else _identity,
                renderer,
            ],
        )
    )
    handler.addFilter(_DropArqJobLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("arq", "arq.worker", "arq.jobs", "arq.connections"):
        arq_logger = logging.getLogger(name)
        arq_logger.handlers.clear()
        arq_logger.propagate = True


def worker_id(ctx: dict[str, Any]) -> str:
    """The worker's id (``host-pid-random``), made once and kept in ``ctx["worker_id"]``, so
    every part of start-up that needs one (logs, metrics, ``pipeline status``) shares it."""
    if not ctx.get("worker_id"):
        ctx["worker_id"] = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return str(ctx["worker_id"])


def bind_worker(ctx: dict[str, Any]) -> str:
    """Put the worker's id (:func:`worker_id`) on every log line written from this context on,
    and return it.

    structlog's context variables are copied into every task created afterwards (the flusher,
    each job), which is how their lines carry it too.
    """
    worker = worker_id(ctx)
    structlog.contextvars.bind_contextvars(worker_id=worker)
    return worker


def _identity(
    logger: structlog.typing.WrappedLogger, name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    return event
