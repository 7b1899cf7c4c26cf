"""``pipeline dead-letters list | show ID | replay (--id ID… | --all) | purge --older-than AGE``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.cli.jobs import add_destructive_flags, held_back, known_function
from pipeline.kinds import FUNCTION_NAMES
from pipeline.ops import dead_letters
from pipeline.postgres import create_engine
from pipeline.producer.client import create_pool
from pipeline.settings import get_settings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(value: str) -> dt.timedelta:
    """``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` as a timedelta (for ``--older-than``)."""
    match = re.fullmatch(r"(\d+)([smhdw])", value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 30m, 12h or 7d")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dead-letters`` and its sub-commands."""
    group = commands.add_parser(
        "dead-letters", help="list, show, replay or purge jobs that could not be written"
    )
    actions = group.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="the newest dead letters")
    listing.add_argument("--function", type=known_function, help="only jobs of this function")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(run=_list)

    show = actions.add_parser(
        "show", help="one dead letter with its payload (raw bytes in base64), as JSON"
    )
    show.add_argument("id", type=int)
    show.set_defaults(run=_show)

    replay = actions.add_parser(
        "replay",
        help="enqueue the original payload again; a replay that succeeds leaves the store "
        "(a letter of raw bytes only cannot be replayed)",
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", help="repeatable")
    which.add_argument("--all", action="store_true", help="every dead letter (of --function)")
    replay.add_argument(
        "--function", type=known_function, help="with --all: only jobs of this function"
    )
    add_destructive_flags(replay)
    replay.set_defaults(run=_replay)

    purge = actions.add_parser("purge", help="delete dead letters last seen before a time")
    purge.add_argument("--older-than", type=duration, required=True, help="e.g. 7d, 12h, 30m")
    purge.add_argument("--function", type=known_function, help="only jobs of this function")
    add_destructive_flags(purge)
    purge.set_defaults(run=_purge)


def _with_engine(work: Callable[[AsyncEngine], Awaitable[int]]) -> int:
    async def run() -> int:
        engine = create_engine(get_settings())
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _as_json(letter: dead_letters.DeadLetter) -> str:
    """One letter as a JSON line; raw bytes in base64."""
    fields = dataclasses.asdict(letter)
    if letter.raw is not None:
        fields["raw"] = base64.b64encode(letter.raw).decode("ascii")
    return json.dumps(fields, default=str, ensure_ascii=False)


def _list(args: argparse.Namespace) -> int:
    async def work(engine: AsyncEngine) -> int:
        letters = await dead_letters.listing(engine, function=args.function, limit=args.limit)
        if args.json:
            for letter in letters:
                print(_as_json(letter))
            return 0
        table = Table("id", "function", "error", "tries", "last seen", "raw", "message")
        for d in letters:
            table.add_row(
                str(d.id),
                d.function,
                d.error_class,
                str(d.tries),
                d.last_seen_at.isoformat(timespec="seconds"),
                "" if d.raw is None else f"{len(d.raw)} B",
                d.error_message[:80],
            )
        Console().print(table)
        return 0

    return _with_engine(work)


def _show(args: argparse.Namespace) -> int:
    async def work(engine: AsyncEngine) -> int:
        letter = await dead_letters.get(engine, args.id)
        if letter is None:
            print(f"no dead letter {args.id}")
            return 1
        print(_as_json(letter))
        return 0

    return _with_engine(work)


def _replay(args: argparse.Namespace) -> int:
    async def work(engine: AsyncEngine) -> int:
        if args.all:
            every = await dead_letters.listing(engine, function=args.function, limit=1_000_000)
            letters = [letter for letter in every if letter.replayable]
            skipped = [letter.id for letter in every if not letter.replayable]
            unknown = [letter.id for letter in letters if letter.function not in FUNCTION_NAMES]
            letters = [letter for letter in letters if letter.id not in unknown]
            if unknown:
                print(
                    f"not replayed: dead letter {', '.join(map(str, unknown))} names a "
                    "function this version of the pipeline does not have"
                )
        else:
            found = [await dead_letters.get(engine, i) for i in args.ids]
            letters = [letter for letter in found if letter is not None]
            missing = sorted(set(args.ids) - {letter.id for letter in letters})
            if missing:
                print(f"no dead letter {', '.join(map(str, missing))}")
                return 1
            skipped = [letter.id for letter in letters if not letter.replayable]
            if skipped:  # as with a missing id, nothing is replayed
                print(_only_raw(skipped))
                return 1
        plan = f"would replay {len(letters)} dead letter(s): {_ids(letters)}"
        question = f"replay {len(letters)} dead letter(s)?"
        code = held_back(args, len(letters), plan, question, "nothing replayed")
        if code is not None:
            return code
        redis = await create_pool()
        try:
            job_ids = await dead_letters.replay(redis, letters)
        except dead_letters.NotReplayable as exc:
            print(exc)
            return 1
        finally:
            await redis.aclose()
        print(f"replayed {len(job_ids)} dead letter(s)")
        if skipped:
            print(_only_raw(skipped))
        return 0

    return _with_engine(work)


def _only_raw(ids: list[int]) -> str:
    return (
        f"not replayed: dead letter {', '.join(map(str, ids))} holds only the raw bytes of a job "
        "that never decoded (nothing to replay; see `show` for them)"
    )


def _ids(letters: list[dead_letters.DeadLetter]) -> str:
    shown = ", ".join(str(letter.id) for letter in letters[:20])
    return shown + (f" and {len(letters) - 20} more" if len(letters) > 20 else "")


def _purge(args: argparse.Namespace) -> int:
    async def work(engine: AsyncEngine) -> int:
        doomed = await dead_letters.count_older(engine, args.older_than, function=args.function)
        plan = f"would purge {doomed} dead letter(s) last seen over {args.older_than} ago"
        question = f"delete {doomed} dead letter(s) for good?"
        code = held_back(args, doomed, plan, question, "nothing purged")
        if code is not None:
            return code
        deleted = await dead_letters.purge(engine, args.older_than, function=args.function)
        print(f"purged {deleted} dead letter(s)")
        return 0

    return _with_engine(work)
