"""The dead-letter store: jobs that can never succeed as sent, kept with their payload and error."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_RECORD = text(
    """
    INSERT INTO dead_letters (job_id, function, payload, error_class, error_message, tries)
    VALUES (:job_id, :function, CAST(:payload AS jsonb), :error_class, :error_message, :tries)
    ON CONFLICT (job_id) DO UPDATE
    SET error_class = EXCLUDED.error_class, error_message = EXCLUDED.error_message,
        tries = GREATEST(dead_letters.tries, EXCLUDED.tries), last_seen_at = now()
    """
)


def payload_json(payload: dict[str, Any]) -> str:
    """The payload as JSON that ``jsonb`` accepts, whatever it holds (NULs are replaced)."""
    encoded = json.dumps(payload, default=repr, ensure_ascii=False)
    return encoded.replace("\\u0000", "\\ufffd")


async def record(
    engine: AsyncEngine,
    *,
    job_id: str,
    function: str,
    payload: dict[str, Any],
    error: BaseException,
    tries: int,
) -> None:
    """Store (or refresh) the dead letter of a job; recording the same job twice keeps one row."""
    async with engine.begin() as conn:
        await conn.execute(
            _RECORD,
            {
                "job_id": job_id,
                "function": function,
                "payload": payload_json(payload),
                "error_class": type(error).__name__,
                "error_message": str(error)[:4000],
                "tries": tries,
            },
        )
