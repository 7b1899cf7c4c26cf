"""``pipeline jobs [list | show ID | cancel ID…]``, ``pipeline pause | resume`` and
``pipeline exporter``: see the queue's jobs, act on them, and export the queue's metrics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.kinds import FUNCTION_NAMES
from pipeline.ops import endpoint, pause, queue_jobs
from pipeline.ops.queue_metrics import QUEUE_REGISTRY
from pipeline.postgres import create_engine, redacted
from pipeline.producer.client import create_pool
from pipeline.redis_queue import close_sentinels
from pipeline.serialization import UNDELIVERABLE
from pipeline.settings import Settings, get_settings

log = structlog.get_logger("pipeline.exporter")
#: Job functions an operator may name: every write kind, ``atomic``, the undeliverable.
KNOWN_FUNCTIONS = frozenset(FUNCTION_NAMES | {UNDELIVERABLE})
EXPORTER_PORT = 9100


def known_function(value: str) -> str:
    """An argparse type: a job function the pipeline has, or a clear error listing them."""
    if value not in KNOWN_FUNCTIONS:
        known = ", ".join(sorted(KNOWN_FUNCTIONS))
        raise argparse.ArgumentTypeError(f"no job function {value!r}; known: {known}")
    return value


def held_back(
    args: argparse.Namespace, count: int, plan: str, question: str, refused: str
) -> int | None:
    """None when a destructive command of ``count`` things may go on; else its exit code.

    ``--dry-run`` prints ``plan`` and ends (0); on a terminal, unless ``--yes`` or there is
    nothing to do, ``plan`` is printed and ``question`` asked, and anything but yes ends (1). A
    script (no terminal) is not asked: it asked for the command."""
    if args.dry_run:
        print(plan)
        return 0
    if not count or args.yes or not sys.stdin.isatty():
        return None
    print(plan)
    if input(f"{question} [y/N] ").strip().lower() in ("y", "yes"):
        return None
    print(refused)
    return 1


def add_destructive_flags(parser: argparse.ArgumentParser) -> None:
    """``--dry-run`` and ``--yes``, for every command that removes or re-sends something."""
    parser.add_argument("--dry-run", action="store_true", help="say what would be done, do none")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask on a terminal")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``jobs``, ``pause``, ``resume`` and ``exporter``."""
    group = commands.add_parser(
        "jobs",
        help="list the queue's jobs (due, deferred, in progress, retrying with their last "
        "error), show one with its payload, or cancel queued ones into the dead-letter store",
    )
    actions = group.add_subparsers(dest="action")
    group.set_defaults(run=_list, state=None, function=None, limit=50, json=False)

    listing = actions.add_parser("list", help="jobs in the order workers take them (default)")
    listing.add_argument("--state", choices=queue_jobs.STATES)
    listing.add_argument("--function", type=known_function, help="only jobs of this function")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(run=_list)

    show = actions.add_parser("show", help="one job with its payload, as JSON")
    show.add_argument("job_id")
    show.set_defaults(run=_show)

    cancel = actions.add_parser(
        "cancel",
        help="remove queued jobs (not in progress); each is kept as a dead letter with reason "
        "Cancelled, so it can be replayed",
    )
    cancel.add_argument("job_ids", nargs="+", metavar="ID")
    cancel.add_argument("--reason", default="", help="kept in the dead letter's message")
    add_destructive_flags(cancel)
    cancel.set_defaults(run=_cancel)

    paused = commands.add_parser(
        "pause", help="stop every worker of the queue taking jobs (running ones finish)"
    )
    paused.add_argument("--reason", default="", help="shown by status and /ready")
    paused.set_defaults(run=_pause)
    resumed = commands.add_parser("resume", help="let the workers take jobs again")
    resumed.set_defaults(run=_resume)

    exporter = commands.add_parser(
        "exporter",
        help="serve the queue's metrics (depth by function and state, oldest due job's age, "
        f"dead letters, pause, workers seen) on PIPELINE_METRICS_PORT (default {EXPORTER_PORT}) "
        "without running a worker",
    )
    exporter.set_defaults(run=_exporter)


def _with_redis(work: Callable[[Settings, Redis], Awaitable[int]]) -> int:
    async def run() -> int:
        settings = get_settings()
        redis = await create_pool(settings=settings)
        try:
            return await work(settings, redis)
        finally:
            await redis.aclose()
            await close_sentinels(redis)

    return asyncio.run(run())


def _list(args: argparse.Namespace) -> int:
    async def work(settings: Settings, redis: Redis) -> int:
        jobs = await queue_jobs.listing(
            redis, settings.queue_name, limit=args.limit, state=args.state, function=args.function
        )
        if args.json:
            for job in jobs:
                print(json.dumps(job.summary()))
            return 0
        table = Table("job id", "function", "state", "tries", "returns", "age", "last error")
        table.title = f"queue {settings.queue_name}"
        for job in jobs:
            table.add_row(
                job.job_id,
                job.function,
                job.state,
                str(job.tries),
                str(job.returns),
                "-" if job.age_s is None else f"{job.age_s:.1f} s",
                (job.last_error or "")[:80],
            )
        if not jobs:
            table.caption = "no job matches"
        # Piped into a file or grep, rows stay whole instead of folding at 80 columns.
        Console(width=None if sys.stdout.isatty() else 200).print(table)
        return 0

    return _with_redis(work)


def _show(args: argparse.Namespace) -> int:
    async def work(settings: Settings, redis: Redis) -> int:
        job = await queue_jobs.get(redis, settings.queue_name, args.job_id)
        if job is None:
            print(f"no job {args.job_id!r} in queue {settings.queue_name}", file=sys.stderr)
            return 1
        print(json.dumps({**job.summary(), "payload": job.payload}, default=str, indent=2))
        return 0

    return _with_redis(work)


def _cancel(args: argparse.Namespace) -> int:
    async def work(settings: Settings, redis: Redis) -> int:
        found = [await queue_jobs.get(redis, settings.queue_name, i) for i in args.job_ids]
        jobs = [job for job in found if job is not None]
        missing = [i for i, job in zip(args.job_ids, found, strict=True) if job is None]
        for job_id in missing:
            print(f"no job {job_id!r} in queue {settings.queue_name}", file=sys.stderr)
        plan = "\n".join(f"would cancel {j.job_id} ({j.function}, {j.state})" for j in jobs)
        question = f"cancel {len(jobs)} job(s) into the dead-letter store?"
        code = held_back(args, len(jobs), plan, question, "nothing cancelled")
        if code is not None:
            return code or int(bool(missing))
        engine = create_engine(settings)
        try:
            done = [await _cancel_one(redis, engine, settings, job.job_id, args) for job in jobs]
        finally:
            await engine.dispose()
        return 0 if all(done) and not missing else 1

    return _with_redis(work)


async def _cancel_one(
    redis: Redis, engine: AsyncEngine, settings: Settings, job_id: str, args: argparse.Namespace
) -> bool:
    reason = f"cancelled by an operator{f': {args.reason}' if args.reason else ''}"
    result = await queue_jobs.cancel(redis, engine, settings.queue_name, job_id, reason=reason)
    if result.outcome == "cancelled":
        print(f"cancelled {job_id}: dead letter {result.dead_letter_id}")
        return True
    why = "it is in progress" if result.outcome == "running" else "it is no longer queued"
    print(f"not cancelled {job_id}: {why}", file=sys.stderr)
    return False


def _pause(args: argparse.Namespace) -> int:
    async def work(settings: Settings, redis: Redis) -> int:
        held = await pause.pause(redis, settings.queue_name, args.reason)
        print(f"queue {settings.queue_name} paused since {held.since.isoformat()} by {held.by}")
        return 0

    return _with_redis(work)


def _resume(args: argparse.Namespace) -> int:
    async def work(settings: Settings, redis: Redis) -> int:
        was = await pause.resume(redis, settings.queue_name)
        print(f"queue {settings.queue_name} {'resumed' if was else 'was not paused'}")
        return 0

    return _with_redis(work)


#: What the exporter serves: the queue's side and its own process's figures.
EXPORTER_PROCESS = CollectorRegistry()
ProcessCollector(registry=EXPORTER_PROCESS)


def _exporter(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.metrics_port is None:
        settings = settings.model_copy(update={"metrics_port": EXPORTER_PORT})
    return asyncio.run(serve_exporter(settings))


async def serve_exporter(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Serve ``/metrics`` (the queue's side) and ``/ready`` until SIGTERM/SIGINT or ``stop``.

    The endpoint listens before Redis is reached, so while Redis is down ``/ready`` answers 503
    and ``/metrics`` says every source is down, from the first second."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    engine = create_engine(settings)
    served = endpoint.Endpoint(settings, None, registries=(QUEUE_REGISTRY, EXPORTER_PROCESS))
    redis: Redis | None = None
    try:
        assert settings.metrics_port is not None
        await served.start(settings.metrics_host, settings.metrics_port)
        log.info(
            "exporter started",
            metrics_port=served.port,
            queue=settings.queue_name,
            redis=redacted(settings.redis_url),
        )
        redis = await _connect(settings, stop)
        if redis is not None:
            served.redis = redis
            served.sampler = endpoint.sampler(settings, redis, engine)
            await stop.wait()
    finally:
        await served.close()
        if redis is not None:
            await redis.aclose()
            await close_sentinels(redis)
        await engine.dispose()
    return 0


async def _connect(settings: Settings, stop: asyncio.Event) -> Redis | None:
    """The queue's Redis, tried every second until it answers or ``stop`` is set."""
    while not stop.is_set():
        try:
            return await create_pool(settings=settings)
        except Exception as exc:  # down at start-up: keep serving 503 and try again
            log.warning("Redis unreachable; retrying", error=f"{type(exc).__name__}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return None
