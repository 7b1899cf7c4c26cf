"""The read-only page at ``/`` of the metrics port: the queue, the workers and their recent
flushes, dead letters by reason, and whether the queue is paused.

Rendered on the server from the same reads as ``pipeline status`` (no script, no build step);
it refreshes itself every few seconds with a ``<meta>`` tag. Every value is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.ops import status
from pipeline.ops.pause import Pause, paused

REFRESH_S = 5
_BY_REASON = text(
    "SELECT function, error_class, count(*), max(last_seen_at) FROM dead_letters "
    "GROUP BY function, error_class ORDER BY count(*) DESC, function, error_class"
)
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; } td, th { padding: .25em .8em; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; } td.n { text-align: right; }
.banner { padding: .6em 1em; border-radius: 4px; display: inline-block; font-weight: bold; }
.paused { background: #ffe08a; } .running { background: #c8ecc8; } .error { background: #f7c6c6; }
.muted { color: #777; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(v)}</td>' if isinstance(v, int | float) else f"<td>{_e(v)}</td>"
            for v in row
        )
        + "</tr>"
        for row in rows
    )
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">{_e(empty)}</td></tr>'
    return f"<table><tr>{head}</tr>{body}</table>"


def _banner(held: Pause | None, error: str | None) -> str:
    if error is not None:
        return f'<p class="banner error">Redis did not answer: {_e(error)}</p>'
    if held is None:
        return '<p class="banner running">consuming: workers take jobs</p>'
    why = f" ({held.reason})" if held.reason else ""
    since = held.since.isoformat(timespec="seconds")
    return (
        f'<p class="banner paused">PAUSED since {_e(since)} by {_e(held.by)}{_e(why)}: '
        "workers take no jobs until <code>pipeline resume</code></p>"
    )


def _queue(queue: status.QueueStatus | None) -> str:
    if queue is None:
        return '<p class="muted">unknown: Redis did not answer</p>'
    oldest = "-" if queue.oldest_due_age_s is None else f"{queue.oldest_due_age_s:.1f} s"
    return _table(
        ("jobs", "in progress", "due", "deferred", "retrying", "oldest due job waiting"),
        [(queue.jobs, queue.in_progress, queue.due, queue.deferred, queue.retrying, oldest)],
        "",
    )


def _workers(seen: list[status.WorkerStatus]) -> str:
    rows = [
        (
            w.worker_id,
            w.state,
            f"{w.seen_age_s:.1f} s ago",
            w.batches,
            w.last_flush.at if w.last_flush else "never",
        )
        for w in seen
    ]
    return _table(
        ("worker", "state", "seen", "batches", "last flush"),
        rows,
        "no worker has published in the last minute",
    )


def _flushes(seen: list[status.WorkerStatus]) -> str:
    flushes = [(w.worker_id, flush) for w in seen for flush in w.recent_flushes]
    flushes.sort(key=lambda item: item[1].at, reverse=True)
    rows = [
        (
            flush.at,
            worker,
            flush.jobs,
            flush.rows,
            flush.failed,
            flush.duration_ms,
            ", ".join(flush.kinds),
        )
        for worker, flush in flushes[:20]
    ]
    return _table(("at", "worker", "jobs", "rows", "failed", "ms", "kinds"), rows, "no flush yet")


async def _letters(engine: AsyncEngine | None) -> str:
    if engine is None:
        return '<p class="muted">no database configured</p>'
    try:
        async with engine.connect() as conn:
            found = (await conn.execute(_BY_REASON)).all()
    except Exception as exc:  # PostgreSQL down or unmigrated: say so on the page
        return f'<p class="banner error">PostgreSQL did not answer: {_e(type(exc).__name__)}</p>'
    rows = [(f, reason, int(n), last.isoformat(timespec="seconds")) for f, reason, n, last in found]
    return _table(("function", "reason", "unresolved", "last seen"), rows, "none")


async def render(queue_name: str, redis: aioredis.Redis | None, engine: AsyncEngine | None) -> str:
    """The whole page, read now."""
    queue: status.QueueStatus | None = None
    seen: list[status.WorkerStatus] = []
    held: Pause | None = None
    error: str | None = None if redis is not None else "not connected yet"
    if redis is not None:
        try:
            queue = await status.queue_status(redis, queue_name)
            seen = await status.workers(redis, queue_name)
            held = await paused(redis, queue_name)
        except Exception as exc:  # Redis down: the page says so instead of failing
            error = type(exc).__name__
    at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>pipeline: {_e(queue_name)}</title><style>{_STYLE}</style></head>
<body>
<h1>pipeline queue <code>{_e(queue_name)}</code></h1>
{_banner(held, error)}
<p class="muted">read at {_e(at)}; refreshes every {REFRESH_S} s;
<a href="/metrics">/metrics</a> · <a href="/ready">/ready</a></p>
<h2>Queue</h2>
{_queue(queue)}
<h2>Workers</h2>
{_workers(seen)}
<h2>Recent flushes</h2>
{_flushes(seen)}
<h2>Dead letters by reason</h2>
{await _letters(engine)}
</body></html>
"""
