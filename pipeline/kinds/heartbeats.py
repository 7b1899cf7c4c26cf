"""``heartbeat``: the latest sign of life of a service instance; its time only moves forward."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from pipeline.kinds.base import Row, Target, WriteKind, newest
from pipeline.kinds.fields import STRICT, JsonObject, Key, ShortKey, Timestamp, to_json


class Heartbeat(BaseModel):
    """Keyword arguments of ``heartbeat``; ``at`` defaults to the job's enqueue time."""

    model_config = STRICT
    service: ShortKey
    instance_id: Key
    status: Key = Field(max_length=20)
    metadata: JsonObject = Field(default_factory=dict)
    at: Timestamp | None = None


SERVICE_HEALTH = Target(
    name="service_health",
    table="service_health",
    columns=(
        ("service_name", "text"),
        ("instance_id", "text"),
        ("status", "text"),
        ("last_heartbeat", "timestamptz"),
        ("metadata", "text"),
    ),
    key=("service_name", "instance_id"),
    merge=newest("last_heartbeat"),
    reports=True,
    sql="""
        WITH written AS (
            INSERT INTO service_health AS t (service_name, instance_id, status, last_heartbeat,
                                             metadata)
            SELECT service_name, instance_id, status, last_heartbeat, CAST(metadata AS jsonb)
            FROM {rows}
            ON CONFLICT (service_name, instance_id) DO UPDATE
            SET status = EXCLUDED.status, last_heartbeat = EXCLUDED.last_heartbeat,
                metadata = EXCLUDED.metadata, updated_at = now()
            WHERE t.last_heartbeat < EXCLUDED.last_heartbeat
            RETURNING t.service_name, t.instance_id
        )
        SELECT 'unchanged', * FROM (
            SELECT * FROM {keys} EXCEPT SELECT * FROM written
        ) d WHERE (SELECT count(*) FROM written) < {size}
    """,
)


def _rows(p: Heartbeat, version: int) -> list[Row]:
    at = p.at or dt.datetime.fromtimestamp(version / 1_000_000, dt.UTC)
    return [(p.service, p.instance_id, p.status, at, to_json(p.metadata))]


heartbeat = WriteKind("heartbeat", Heartbeat, SERVICE_HEALTH, _rows)
