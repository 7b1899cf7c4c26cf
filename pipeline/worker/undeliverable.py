"""The reserved job function :data:`~pipeline.serialization.UNDELIVERABLE`: jobs that cannot run.

The worker's deserializer turns every job it cannot hand to its function (bytes that are not
msgpack, not an arq job, a function this worker does not have, nesting too deep) into a job of
this function, in both worker modes. It records the dead letter (the job's raw bytes, or its
arguments when they decoded) and fails the job with the reason, so a producer awaiting it gets
:class:`pipeline.JobFailed`. While the dead letter cannot be written (PostgreSQL unreachable),
the job goes back to the queue with ``Retry`` instead (its try given back), until it can be.
"""

from __future__ import annotations

from typing import Any, NoReturn

from arq import Retry, func
from arq.worker import Function

from pipeline.errors import InvalidPayload, UndeliverableJob
from pipeline.kinds import BY_NAME
from pipeline.ops import metrics
from pipeline.serialization import UNDELIVERABLE, UNDELIVERED, Undeliverable, serialize
from pipeline.settings import Settings
from pipeline.worker.runtime import runtime


def _letter(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Undeliverable:
    """The job's :class:`Undeliverable`. Only a map that reads as an arq result reaches this
    function without one (the deserializer passes results through): that is recorded too."""
    letter = kwargs.get(UNDELIVERED)
    if isinstance(letter, Undeliverable) and not args and len(kwargs) == 1:
        return letter
    reason = f"the function name {UNDELIVERABLE!r} is reserved"
    return Undeliverable(UndeliverableJob(reason), UNDELIVERABLE, raw=serialize([args, kwargs]))


async def record_undeliverable(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> NoReturn:
    """arq job ``pipeline_undeliverable``: dead-letter the job, then fail it with its reason."""
    runner = runtime(ctx).jobs
    letter = _letter(args, kwargs)
    function = letter.function or UNDELIVERABLE
    # Metrics are labelled by write kind: an unknown function's name would be unbounded input.
    kind = function if function in BY_NAME else UNDELIVERABLE
    error = letter.error
    try:
        await runner.keep_dead_letter(
            ctx,
            function=function,
            payload=letter.payload or {},
            raw=letter.raw,
            error=error,
            tries=int(ctx["job_try"]),
        )
    except Retry:  # the job must not be lost: it stays queued, its try given back
        metrics.job_finished(kind, "retried")
        raise
    metrics.dead_lettered(kind, type(error).__name__)
    metrics.job_finished(kind, "invalid" if isinstance(error, InvalidPayload) else "dead_lettered")
    raise error


def function(settings: Settings) -> Function:
    """The arq function of :data:`UNDELIVERABLE` (a run that cannot record its letter gives its
    try back, so ``max_tries`` counts only runs cut short, as for the write kinds)."""
    metrics.declare_kind(UNDELIVERABLE)
    return func(record_undeliverable, name=UNDELIVERABLE, max_tries=settings.max_tries + 2)
