"""The audit read repository: the trail of mutations of one entity, in the order written."""

from __future__ import annotations

from sqlalchemy import select

from pipeline.reads.base import ReadRepository, check_limit
from pipeline.reads.models import AuditEntry, from_row
from pipeline.schema import metadata

AUDIT_LOG = metadata.tables["audit_log"]


class AuditReads(ReadRepository):
    """Reads of one database's audit log.

    ``source`` is an engine (each read checks out a connection of its own) or a session (reads
    run in the session's transaction). Nothing here writes or commits.
    """

    query_prefix = "audit"

    async def trail(
        self, entity_type: str, entity_id: str, limit: int = 100, *, after_id: int | None = None
    ) -> list[AuditEntry]:
        """Up to ``limit`` audit entries of the entity, in the order written (by id).

        Ids come from an identity column, assigned as the rows are inserted. One statement on
        the index ix_audit_log_entity; for the entries after a page, pass the last entry's
        ``id`` as ``after_id`` (keyset pagination).
        """
        check_limit(limit)
        statement = (
            select(AUDIT_LOG)
            .where(AUDIT_LOG.c.entity_type == entity_type, AUDIT_LOG.c.entity_id == entity_id)
            .order_by(AUDIT_LOG.c.id)
            .limit(limit)
        )
        if after_id is not None:
            statement = statement.where(AUDIT_LOG.c.id > after_id)
        return [from_row(AuditEntry, row) for row in await self._rows(statement)]
