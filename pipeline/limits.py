"""How much one job may carry: one definition, checked by the worker (which dead-letters a job
over it) and by the producer side (which refuses the job before anything is queued).

Both read them from the same settings (``PIPELINE_JOB_MAX_ITEMS``, ``PIPELINE_JOB_MAX_BYTES``); a
producer configured with lower limits than its workers only refuses earlier.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import InvalidPayload
from pipeline.settings import Settings


@dataclass(frozen=True, slots=True)
class Limits:
    """The rows (one per item, or per rubric version) and serialized bytes of one job, at most."""

    items: int
    bytes: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        """The limits ``settings`` set."""
        return cls(settings.job_max_items, settings.job_max_bytes)

    def check_items(self, function: str, items: int) -> None:
        """Raise :class:`InvalidPayload` if a job of ``items`` rows is over the limit."""
        if items > self.items:
            raise InvalidPayload(f"{function}: {items} items in one job; at most {self.items}")

    def check_bytes(self, function: str, size: int) -> None:
        """Raise :class:`InvalidPayload` if a job of ``size`` serialized bytes is over the limit."""
        if size > self.bytes:
            raise InvalidPayload(f"{function}: the job is {size} bytes; at most {self.bytes}")
