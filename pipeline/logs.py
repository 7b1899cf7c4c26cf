"""Logging: structlog for the pipeline's own lines, stdlib (arq, alembic) routed through it.

JSON lines when stderr is not a terminal (or ``PIPELINE_LOG_FORMAT=json``), readable colours
otherwise. arq's per-job INFO lines are dropped unless ``PIPELINE_LOG_JOBS`` is set: at thousands
of jobs a second they cost more than the jobs; the pipeline logs one line per flushed batch.

Every ``pipeline`` command configures logging before it does anything else. arq's own command
configures arq's logging before the worker is made, so ``arq pipeline.WorkerSettings`` is told to
use this module with arq's option: ``--custom-log-dict pipeline.logs.ARQ_LOGGING``.

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

from pipeline.settings import Settings, get_settings

#: arq's dictConfig for ``arq … --custom-log-dict pipeline.logs.ARQ_LOGGING``: the pipeline's
#: handler on the root logger, so arq's first lines are formatted as every later one.
ARQ_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"pipeline": {"()": "pipeline.logs.handler"}},
    "root": {"handlers": ["pipeline"]},
}

#: arq's loggers, whose own handlers :func:`handler` removes so they reach the root's.
ARQ_LOGGERS = ("arq", "arq.worker", "arq.jobs", "arq.connections")
ALEMBIC_PLUGINS = "alembic.runtime.plugins"
#: every logger :func:`handler` changes (``""`` is the root).
CONFIGURED = ("", ALEMBIC_PLUGINS, *ARQ_LOGGERS)


class _DropArqJobLines(logging.Filter):
    """arq formats every per-job INFO line as ``'%6.2fs …'``; errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith("%6.2fs"))


def as_json(settings: Settings) -> bool:
    """Whether lines are JSON: asked for, or stderr is not a terminal."""
    if settings.log_format == "auto":
        return not sys.stderr.isatty()
    return settings.log_format == "json"


def configure(settings: Settings | None = None) -> None:
    """Configure structlog and the stdlib root logger (again, if need be: it is idempotent)."""
    logging.getLogger().handlers[:] = [handler(settings)]


def handler(settings: Settings | None = None) -> logging.Handler:
    """Configure structlog and the root logger's level, and return the handler that renders
    every line (what :data:`ARQ_LOGGING` installs)."""
    settings = settings or get_settings()
    json_lines = as_json(settings)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(default=repr)
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    out = logging.StreamHandler()
    out.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # arq's failure line carries the exception's extra() as the record's ``extra``
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(allow=("extra",))],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if json_lines else _identity,
                renderer,
            ],
        )
    )
    if not settings.log_jobs:
        out.addFilter(_DropArqJobLines())
    logging.getLogger().setLevel(settings.log_level.upper())
    logging.getLogger(ALEMBIC_PLUGINS).setLevel(logging.WARNING)  # a line per plugin
    for name in ARQ_LOGGERS:
        arq_logger = logging.getLogger(name)
        arq_logger.handlers.clear()
        arq_logger.propagate = True
    return out


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
