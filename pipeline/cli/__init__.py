"""The ``pipeline`` command: run the worker, migrate the schema, handle dead letters, and try it
all with a demo."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pipeline.settings import CONFIGURATION_ERRORS, get_settings, report_configuration


def _migrate(args: argparse.Namespace) -> int:
    from pipeline.cli.migrate import downgrade, upgrade

    url = str(get_settings().database_url)
    if args.down:
        downgrade(url, args.revision)
    else:
        upgrade(url, args.revision, create=not args.no_create)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from pipeline.worker.service import run

    run(burst=args.burst)
    return 0


def _ready(args: argparse.Namespace) -> int:
    from pipeline.ops.readiness import readiness

    checks = asyncio.run(readiness(get_settings()))
    for check in checks:
        state = "ok" if check.error is None else f"unreachable ({check.error})"
        print(f"{check.service} {check.target}: {state}")
    return 0 if all(check.error is None for check in checks) else 1


def _bench(args: argparse.Namespace) -> int:
    from pipeline.bench import main as bench

    return bench(args.quick, args.out, args.only)


def _demo(args: argparse.Namespace) -> int:
    from pipeline.cli.demo import run

    return asyncio.run(run(nodes=args.nodes, workers=args.workers))


def parser() -> argparse.ArgumentParser:
    """The command line, one sub-command per job."""
    root = argparse.ArgumentParser(
        prog="pipeline",
        description="The write path for many producers: arq jobs coalesced into batched "
        "PostgreSQL upserts. Configure with PIPELINE_* environment variables.",
    )
    root.add_argument("--version", action="version", version=f"pipeline {_version()}")
    commands = root.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser(
        "migrate", help="create the database if missing and apply migrations (alembic upgrade)"
    )
    migrate.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    migrate.add_argument("--down", action="store_true", help="downgrade to the revision instead")
    migrate.add_argument("--no-create", action="store_true", help="never create the database")
    migrate.set_defaults(run=_migrate)

    worker = commands.add_parser(
        "worker",
        help="run a worker: arq's, claiming and finishing jobs in batches, surviving Redis "
        "dropping its connections (the worker arq pipeline.WorkerSettings runs too)",
    )
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.set_defaults(run=_worker)

    ready = commands.add_parser(
        "ready",
        help="exit 0 if PostgreSQL and Redis both answer now, 1 if not (a readiness probe)",
    )
    ready.set_defaults(run=_ready)

    demo = commands.add_parser(
        "demo",
        help="start workers and a producer that simulates a tree search, then read back the "
        "best branch",
    )
    demo.add_argument("--nodes", type=int, default=3000, help="nodes to grow (default 3000)")
    demo.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    demo.set_defaults(run=_demo)

    bench = commands.add_parser(
        "bench",
        help="run every benchmark scenario side by side (minutes); prints ratios to a baseline",
    )
    bench.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not minutes")
    bench.add_argument("--out", type=Path, default=Path("bench-results"), help="JSON/PNG folder")
    bench.add_argument(
        "--only", action="append", help="only scenarios whose name contains this (repeatable)"
    )
    bench.set_defaults(run=_bench)

    from pipeline.cli.dead_letters import add_commands

    add_commands(commands)
    from pipeline.cli import jobs, status

    status.add_commands(commands)
    jobs.add_commands(commands)
    return root


def _version() -> str:
    """The installed distribution's version (its metadata, as ``pip show pipeline-writes`` has
    it): the import name is ``pipeline``, the distribution ``pipeline-writes``."""
    try:
        return version("pipeline-writes")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipeline`` console script.

    Settings are read before anything else: a bad one ends the command with one line per bad
    setting (never its value) and exit status 2, before any connection or log line."""
    args = parser().parse_args(argv)
    try:
        settings = get_settings()
    except CONFIGURATION_ERRORS as error:
        report_configuration(error)
        return 2
    from pipeline import logs

    logs.configure(settings)  # before anything logs: every line in one format, JSON if asked for
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
