"""What one flush of the coalescer did: logged as ``batch flushed``, counted in the metrics,
published in the worker's status entry and shown by ``pipeline status`` and the web page."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class FlushReport(BaseModel):
    """One flush. Every field has a default, so an entry published by another version of the
    worker still reads."""

    model_config = ConfigDict(frozen=True)

    batch_id: str | None = None  # None when nothing committed
    jobs: int = 0
    rows: int = 0
    kinds: tuple[str, ...] = ()
    transactions: int = 0
    retries: int = 0  # whole-batch retries after a transient error
    failed: int = 0  # jobs not committed (retried later or dead-lettered)
    held: int = 0  # written again once the flushes running alongside have ended
    requeued: int = 0  # kept for when PostgreSQL answers again
    written: dict[str, int] = {}  # rows applied, by kind
    duration_ms: float = 0.0
    at: str = ""  # ISO 8601, UTC
    batch_ids: tuple[str, ...] = ()  # when split to isolate a bad job: each part's id
    failures: dict[str, int] = {}  # failed jobs by error class

    def fields(self) -> dict[str, Any]:
        """The report as logged and published: ``batch_ids`` only for a split batch,
        ``failures`` only when a job failed."""
        found = self.model_dump(mode="json")
        if len(self.batch_ids) <= 1:
            del found["batch_ids"]
        if not self.failures:
            del found["failures"]
        return found
