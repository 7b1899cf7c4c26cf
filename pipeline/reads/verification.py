"""The claim-verification read repository: claims, verifications, consensus, training data,
model checkpoints and service health, as read models.

Verification results, consensus decisions and training data refer to a claim by its external id
(``claims.external_id``), which is what every method here takes. Every read issues one
statement, except :meth:`VerificationReads.claim`, which issues at most three.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Interval,
    RowMapping,
    Select,
    Table,
    bindparam,
    func,
    select,
    tuple_,
)

from pipeline.reads.base import ReadRepository, check_limit, fetch, page_of
from pipeline.reads.models import (
    Checkpoint,
    CheckpointCursor,
    Claim,
    ClaimCursor,
    ClaimWithVerifications,
    Consensus,
    Page,
    ServiceCursor,
    ServiceHeartbeat,
    TrainingCursor,
    TrainingExample,
    Verification,
    VerificationCursor,
    from_row,
)
from pipeline.schema import metadata

CLAIMS = metadata.tables["claims"]
RESULTS = metadata.tables["verification_results"]
CONSENSUS = metadata.tables["consensus_decisions"]
TRAINING = metadata.tables["training_data"]
CHECKPOINTS = metadata.tables["model_checkpoints"]
HEALTH = metadata.tables["service_health"]


class VerificationReads(ReadRepository):
    """Reads of one database's claim-verification tables.

    ``source`` is an engine (each read checks out a connection of its own; point it at a replica
    if you like) or a session (reads run in the session's transaction and see its uncommitted
    writes). Nothing here writes or commits.
    """

    query_prefix = "verification"

    async def verifications_for_claim(self, claim_external_id: str) -> list[Verification]:
        """Every framework's verifications of the claim, oldest first (ties by result_id)."""
        rows = await self._rows(_verifications_of(claim_external_id))
        return [from_row(Verification, row) for row in rows]

    async def recent_verifications(
        self, limit: int = 100, before: VerificationCursor | None = None
    ) -> Page[Verification, VerificationCursor]:
        """One page of all verifications, newest first (ties by result_id, descending).

        Pass a page's ``next_cursor`` as ``before`` for the next, older page. Keyset pagination
        on the index ix_verification_results_recent: a page costs the same however deep it is,
        and verifications recorded during a walk never make it repeat or skip one.
        """
        check_limit(limit)
        statement = (
            select(RESULTS)
            .order_by(RESULTS.c.created_at.desc(), RESULTS.c.result_id.desc())
            .limit(limit + 1)
        )
        if before is not None:
            statement = statement.where(
                tuple_(RESULTS.c.created_at, RESULTS.c.result_id)
                < (before.created_at, before.result_id)
            )
        rows = await self._rows(statement)
        items = [from_row(Verification, row) for row in rows]
        return page_of(items, limit, lambda last: last.cursor)

    async def consensus_for_claim(self, claim_external_id: str) -> Consensus | None:
        """The standing consensus decision on the claim, or None if there is none yet."""
        rows = await self._rows(_consensus_of(claim_external_id))
        return _consensus(rows[0]) if rows else None

    async def claim(self, external_id: str) -> ClaimWithVerifications | None:
        """The claim with its verifications and consensus, or None if there is no such claim.

        Three statements (the claim, its verifications, its consensus) however many
        verifications it has, one if the claim does not exist; all three see one snapshot, so
        the consensus never refers to a verification missing from the list. Verifications of a
        claim that was never stored are not returned here; see :meth:`verifications_for_claim`.
        """
        async with self._snapshot() as conn:
            found = await fetch(conn, select(CLAIMS).where(CLAIMS.c.external_id == external_id))
            if not found:
                return None
            verifications = await fetch(conn, _verifications_of(external_id))
            consensus = await fetch(conn, _consensus_of(external_id))
        return ClaimWithVerifications(
            claim=from_row(Claim, found[0]),
            verifications=tuple(from_row(Verification, row) for row in verifications),
            consensus=_consensus(consensus[0]) if consensus else None,
        )

    async def claims_by_type(
        self, claim_type: str, limit: int = 100, before: ClaimCursor | None = None
    ) -> Page[Claim, ClaimCursor]:
        """One page of the claims of one ``claim_type``, newest first (ties by id, descending).

        Pass a page's ``next_cursor`` as ``before`` for the next, older page; keyset pagination
        on the index ix_claims_type_recent.
        """
        check_limit(limit)
        statement = _by_time(CLAIMS, CLAIMS.c.claim_type == claim_type, limit, before, newest=True)
        items = [from_row(Claim, row) for row in await self._rows(statement)]
        return page_of(items, limit, lambda last: last.cursor)

    async def training_batch(
        self, training_batch_id: str, limit: int = 100, after: TrainingCursor | None = None
    ) -> Page[TrainingExample, TrainingCursor]:
        """One page of the examples of one training batch, oldest first (ties by id).

        Pass a page's ``next_cursor`` as ``after``; keyset pagination on the index
        ix_training_data_batch.
        """
        check_limit(limit)
        batch = TRAINING.c.training_batch_id == training_batch_id
        statement = _by_time(TRAINING, batch, limit, after, newest=False)
        items = [from_row(TrainingExample, row) for row in await self._rows(statement)]
        return page_of(items, limit, lambda last: last.cursor)

    async def checkpoints(
        self, model_name: str, limit: int = 100, before: CheckpointCursor | None = None
    ) -> Page[Checkpoint, CheckpointCursor]:
        """One page of every checkpoint of the model (every framework, active or not), newest
        first (ties by id, descending); pass ``next_cursor`` as ``before`` for older ones."""
        check_limit(limit)
        model = CHECKPOINTS.c.model_name == model_name
        statement = _by_time(CHECKPOINTS, model, limit, before, newest=True)
        items = [from_row(Checkpoint, row) for row in await self._rows(statement)]
        return page_of(items, limit, lambda last: last.cursor)

    async def live_services(
        self,
        within: dt.timedelta,
        service_name: str | None = None,
        *,
        limit: int = 1000,
        after: ServiceCursor | None = None,
    ) -> Page[ServiceHeartbeat, ServiceCursor]:
        """One page of the instances (of one service, or of all) whose last heartbeat is no
        older than ``within``, by (service_name, instance_id): the complement of
        :meth:`stale_services`, against the database's ``now()`` the same way.

        Pass a page's ``next_cursor`` as ``after``; the primary key's index gives the order.
        """
        check_limit(limit)
        if within < dt.timedelta(0):
            raise ValueError("within must be >= 0")
        cutoff = func.now() - bindparam("within", within, type_=Interval())
        statement = (
            select(HEALTH)
            .where(HEALTH.c.last_heartbeat >= cutoff)
            .order_by(HEALTH.c.service_name, HEALTH.c.instance_id)
            .limit(limit + 1)
        )
        if service_name is not None:
            statement = statement.where(HEALTH.c.service_name == service_name)
        if after is not None:
            statement = statement.where(
                tuple_(HEALTH.c.service_name, HEALTH.c.instance_id)
                > (after.service_name, after.instance_id)
            )
        items = [from_row(ServiceHeartbeat, row) for row in await self._rows(statement)]
        return page_of(items, limit, lambda last: last.cursor)

    async def unused_training_data(
        self, framework: str, limit: int = 100, after: TrainingCursor | None = None
    ) -> list[TrainingExample]:
        """Up to ``limit`` of the framework's examples not yet used in training, oldest first.

        Keyset pagination on (created_at, id) over the partial index ix_training_data_unused:
        pass the last example's ``cursor`` as ``after`` for the next ones. An example marked
        used during a walk drops out of the pages not yet read.
        """
        check_limit(limit)
        statement = (
            select(TRAINING)
            # A bare NOT (no bound parameter) so the planner matches the partial index's predicate
            # even under a generic plan of the prepared statement.
            .where(TRAINING.c.framework == framework, ~TRAINING.c.used_in_training)
            .order_by(TRAINING.c.created_at, TRAINING.c.id)
            .limit(limit)
        )
        if after is not None:
            statement = statement.where(
                tuple_(TRAINING.c.created_at, TRAINING.c.id) > (after.created_at, after.id)
            )
        return [from_row(TrainingExample, row) for row in await self._rows(statement)]

    async def active_checkpoint(
        self, model_name: str, framework: str | None = None
    ) -> Checkpoint | None:
        """The model's active checkpoint for ``framework``, or None if none is active.

        ``framework=None`` asks for the checkpoint that is not specific to a framework (stored
        with a NULL framework), not for "any framework": see :meth:`active_checkpoints`.
        """
        statement = select(CHECKPOINTS).where(
            *_active(model_name),
            # The expression of uq_model_checkpoints_one_active, so that index answers; it also
            # treats a NULL framework as one more framework, as the index does.
            func.coalesce(CHECKPOINTS.c.framework, "") == (framework or ""),
        )
        rows = await self._rows(statement)
        return from_row(Checkpoint, rows[0]) if rows else None

    async def active_checkpoints(self, model_name: str) -> list[Checkpoint]:
        """The model's active checkpoints, one per framework, the framework-agnostic one (if
        any) first, then by framework."""
        statement = (
            select(CHECKPOINTS)
            .where(*_active(model_name))
            .order_by(CHECKPOINTS.c.framework.asc().nulls_first())
        )
        return [from_row(Checkpoint, row) for row in await self._rows(statement)]

    async def stale_services(
        self, older_than: dt.timedelta, service_name: str | None = None
    ) -> list[ServiceHeartbeat]:
        """Instances whose last heartbeat is older than ``older_than`` (of one service, or of
        all), the stalest first (ties by service_name, instance_id).

        "Now" is the database's clock (``now()``, the start of the read's transaction), so the
        answer does not depend on the reader's clock agreeing with the writers'.
        """
        if older_than < dt.timedelta(0):
            raise ValueError("older_than must be >= 0")
        cutoff = func.now() - bindparam("older_than", older_than, type_=Interval())
        statement = (
            select(HEALTH)
            .where(HEALTH.c.last_heartbeat < cutoff)
            .order_by(HEALTH.c.last_heartbeat, HEALTH.c.service_name, HEALTH.c.instance_id)
        )
        if service_name is not None:
            statement = statement.where(HEALTH.c.service_name == service_name)
        return [from_row(ServiceHeartbeat, row) for row in await self._rows(statement)]


def _verifications_of(claim_external_id: str) -> Select[Any]:
    return (
        select(RESULTS)
        .where(RESULTS.c.claim_id == claim_external_id)
        .order_by(RESULTS.c.created_at, RESULTS.c.result_id)
    )


def _consensus_of(claim_external_id: str) -> Select[Any]:
    return select(CONSENSUS).where(CONSENSUS.c.claim_id == claim_external_id)


def _consensus(row: RowMapping) -> Consensus:
    # The array arrives as a list; the read model is frozen, so it holds a tuple.
    frameworks = tuple(row["participating_frameworks"])
    return from_row(Consensus, {**row, "participating_frameworks": frameworks})


def _active(model_name: str) -> list[ColumnElement[bool]]:
    # is_active is tested bare (no bound parameter) so it matches the unique index's predicate.
    return [CHECKPOINTS.c.model_name == model_name, CHECKPOINTS.c.is_active]


class _TimeCursor(Protocol):
    @property
    def created_at(self) -> dt.datetime: ...
    @property
    def id(self) -> uuid.UUID: ...


def _by_time(
    table: Table,
    where: ColumnElement[bool],
    limit: int,
    cursor: _TimeCursor | None,
    *,
    newest: bool,
) -> Select[Any]:
    """One page (plus one row) of ``table``'s rows matching ``where`` in (created_at, id) order,
    newest or oldest first, after ``cursor``: the keyset walk of the reads paged by time."""
    columns = (table.c.created_at, table.c.id)
    statement = (
        select(table)
        .where(where)
        .order_by(*(column.desc() if newest else column for column in columns))
        .limit(limit + 1)
    )
    if cursor is None:
        return statement
    key, bound = tuple_(*columns), (cursor.created_at, cursor.id)
    return statement.where(key < bound if newest else key > bound)
