"""The reserved job function :data:`~pipeline.serialization.UNDELIVERABLE`: jobs that cannot run.

The worker's deserializer turns every job it cannot hand to its function (bytes that are not
msgpack, not an arq job, a function this worker does not have, nesting too deep) into a job of
this function, in both worker modes. It records the dead letter (the job's raw bytes, or its
arguments when they decoded) and fails the job with the reason, so a producer awaiting it gets
:class:`pipeline.JobFailed`. While the dead letter cannot be written (PostgreSQL unreachable),
the job goes back to the queue with ``Retry`` instead, for as long as the job exists.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, NoReturn

import structlog
from arq import Retry, func
from arq.worker import Function

from pipeline import dead_letters, metrics
from pipeline.errors import InvalidPayload, UndeliverableJob, classify
from pipeline.jobs import JobRunner
from pipeline.kinds import BY_NAME
from pipeline.serialization import UNDELIVERABLE, UNDELIVERED, Undeliverable, serialize
from pipeline.settings import Settings

log = structlog.get_logger("pipeline.jobs")

#: The longest delay between two tries of a job whose dead letter could not be written.
MAX_DELAY_S = 60.0


def _letter(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Undeliverable:
    """The job's :class:`Undeliverable`. Only a map that reads as an arq result reaches this
    function without one (the deserializer passes results through): that is recorded too."""
    letter = kwargs.get(UNDELIVERED)
    if isinstance(letter, Undeliverable) and not args and len(kwargs) == 1:
        return letter
    reason = f"the function name {UNDELIVERABLE!r} is reserved"
    return Undeliverable(UndeliverableJob(reason), UNDELIVERABLE, raw=serialize([args, kwargs]))


def _delay(settings: Settings, job_try: int) -> float:
    """Seconds before the next try, doubling from ``transient_retry_delay_s``."""
    return min(settings.transient_retry_delay_s * 2.0 ** (int(job_try) - 1), MAX_DELAY_S)


async def record_undeliverable(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> NoReturn:
    """arq job ``pipeline_undeliverable``: dead-letter the job, then fail it with its reason."""
    runner: JobRunner = ctx["pipeline"]
    letter = _letter(args, kwargs)
    function = letter.function or UNDELIVERABLE
    # Metrics are labelled by write kind: an unknown function's name would be unbounded input.
    kind = function if function in BY_NAME else UNDELIVERABLE
    error = letter.error
    log.warning(
        "job dead-lettered",
        job_id=ctx["job_id"],
        function=function,
        tries=ctx["job_try"],
        error=type(error).__name__,
        reason=str(error),
    )
    try:
        # Never to arq's timeout, which would fail the job unrecorded.
        async with asyncio.timeout(max(runner.settings.job_timeout_s - 1.0, 0.5)):
            await dead_letters.keep(
                runner.engine,
                job_id=ctx["job_id"],
                function=function,
                payload=letter.payload or {},
                raw=letter.raw,
                error=error,
                tries=ctx["job_try"],
            )
    except Exception as exc:  # the job must not be lost: leave it queued, try again later
        log.warning("dead letter not recorded, job will run again", error=repr(classify(exc)))
        metrics.job_finished(kind, "retried")
        raise Retry(defer=_delay(runner.settings, ctx["job_try"])) from exc
    metrics.dead_lettered(kind, type(error).__name__)
    metrics.job_finished(kind, "invalid" if isinstance(error, InvalidPayload) else "dead_lettered")
    raise error


def function(settings: Settings) -> Function:
    """The arq function of :data:`UNDELIVERABLE`.

    arq fails a job without running it once its tries pass ``max_tries``, which would lose a job
    whose dead letter could not be written yet; so it may try, at the longest delay, for as long
    as a job is kept in Redis.
    """
    metrics.declare_kind(UNDELIVERABLE)
    tries = math.ceil(settings.job_expiry_s / MAX_DELAY_S) + settings.max_tries
    return func(record_undeliverable, name=UNDELIVERABLE, max_tries=tries)
