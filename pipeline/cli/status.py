"""``pipeline status [--json] [--exact]`` and ``pipeline schema [--kind FUNCTION] [--out FILE]``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.ops.status import Status, collect
from pipeline.settings import CONFIGURATION_ERRORS, get_settings, report_configuration

STATUS_HELP = (
    "queue depth (due, deferred, in progress, oldest due job's age), each worker's last flush, "
    "dead letters by job function and rows per table"
)
SCHEMA_HELP = (
    "print the JSON Schema (draft 2020-12) of every job's keyword arguments, keyed by job "
    "function, so producers in any language can validate a payload before enqueueing it"
)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status`` and ``schema``."""
    status = commands.add_parser(
        "status",
        help=STATUS_HELP,
        description=f"Show {STATUS_HELP}, read from the Redis and PostgreSQL of the PIPELINE_* "
        "settings. Workers appear while they publish (every second; gone a minute after they "
        "die). Row counts are PostgreSQL's estimates unless --exact.",
    )
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    status.add_argument(
        "--exact",
        action="store_true",
        help="count every table's rows with count(*) (reads every row: slow on big tables)",
    )
    status.set_defaults(run=_status)

    schema = commands.add_parser(
        "schema",
        help=SCHEMA_HELP,
        description=f"{SCHEMA_HELP[0].upper()}{SCHEMA_HELP[1:]}. Generated from the payload "
        "models the worker validates with, including the `atomic` job; lists of items carry "
        "maxItems from PIPELINE_JOB_MAX_ITEMS as set where this runs. A few rules (no NUL "
        "characters, a node is not its own parent, unique principle names, the item limit "
        "over all writes of an `atomic` job) are checked only by the worker.",
    )
    schema.add_argument(
        "--kind", metavar="FUNCTION", help="only this job function's schema, a document of its own"
    )
    schema.add_argument(
        "--out", type=Path, metavar="FILE", help="write to FILE instead of standard output"
    )
    schema.set_defaults(run=_schema)


def _schema(args: argparse.Namespace) -> int:
    from pipeline.producer import json_schema

    if args.kind is None:
        document = json_schema.schemas()
    else:
        try:
            document = json_schema.kind_schema(args.kind)
        except KeyError:
            known = ", ".join(json_schema.schemas())
            print(
                f"pipeline schema: no job function {args.kind!r}; known: {known}", file=sys.stderr
            )
            return 2
    text = json_schema.dumps(document)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


def _status(args: argparse.Namespace) -> int:
    try:
        status = asyncio.run(collect(get_settings(), exact=args.exact))
    except CONFIGURATION_ERRORS as exc:  # one line per bad setting, as every command reports
        report_configuration(exc)
        return 2
    except Exception as exc:  # unreachable or unmigrated services: one line, not a traceback
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        print(f"pipeline status: {reason} (see: pipeline ready)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status.model_dump(mode="json"), indent=2))
    else:
        render(status, Console())
    return 0


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _since(at: dt.datetime, moment: object) -> str:
    try:
        then = dt.datetime.fromisoformat(str(moment))
    except ValueError:
        return "-"
    return _ago((at - then).total_seconds())


def render(status: Status, console: Console) -> None:
    """Print a status as tables."""
    for table in (_queue(status), _workers(status), _dead_letters(status), _tables(status)):
        console.print(table)


def _queue(status: Status) -> Table:
    q = status.queue
    table = Table(title=f"queue {q.name}")
    headers = ("jobs", "in progress", "due", "deferred", "retrying", "oldest due job waiting")
    for header in headers:
        table.add_column(header, justify="right")
    oldest = "-" if q.oldest_due_age_s is None else f"{q.oldest_due_age_s:.1f} s"
    counts = (q.jobs, q.in_progress, q.due, q.deferred, q.retrying)
    table.add_row(*map(str, counts), oldest)
    if status.paused is not None:
        held = status.paused
        why = f" ({held.reason})" if held.reason else ""
        table.caption = (
            f"PAUSED since {held.since.isoformat(timespec='seconds')} by {held.by}{why}: "
            "workers take no jobs until `pipeline resume`"
        )
    else:
        table.caption = "retrying: handed back at least once (see `pipeline jobs --state retrying`)"
    return table


def _workers(status: Status) -> Table:
    table = Table(title="workers (each publishes every second; a dead one's entry lasts a minute)")
    table.add_column("worker", overflow="fold")
    for header in ("state", "seen", "batches", "last flush", "jobs", "rows", "ms"):
        table.add_column(header, justify="left" if header == "state" else "right")
    for w in status.workers:
        flush = w.last_flush
        table.add_row(
            w.worker_id,
            w.state,
            _ago(w.seen_age_s),
            str(w.batches),
            _since(status.at, flush.at) if flush and flush.at else "never",
            *((str(flush.jobs), str(flush.rows), str(flush.duration_ms)) if flush else ("-",) * 3),
        )
    if not status.workers:
        table.caption = "no worker has published in the last minute"
    return table


def _dead_letters(status: Status) -> Table:
    table = Table(title="dead letters (unresolved)")
    table.add_column("function")
    table.add_column("count", justify="right")
    for function, count in status.dead_letters.by_function.items():
        table.add_row(function, str(count))
    table.add_row("total", str(status.dead_letters.total), style="bold")
    return table


def _tables(status: Status) -> Table:
    exact = status.tables.counted == "exact"
    table = Table(title="rows per table")
    table.add_column("table")
    table.add_column("rows (exact)" if exact else "rows (estimated)", justify="right")
    for name, rows in status.tables.rows.items():
        table.add_row(name, f"{rows:,}")
    if not exact:
        table.caption = "--exact counts every row"
    return table
