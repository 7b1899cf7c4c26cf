"""The ``atomic`` job: writes of several kinds as one unit, all committed together or none.

``enqueue_job("atomic", writes=[{"kind": "upsert_claims", "args": {…}}, {"kind":
"record_verifications", "args": {…}}])``. Each write is validated by its own kind; an invalid one
makes the whole unit invalid. Its rows join the batch like any job's, target by target, so the
unit is still coalesced with other jobs into one transaction; a data error, a conflict, a refused
row or a missing reference in any of its rows rolls that transaction back and the bisection
isolates the unit, which is then dead-lettered (or, for a missing reference, retried) whole,
while the other jobs of the batch commit.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from pipeline.errors import InvalidPayload
from pipeline.kinds import ATOMIC, BY_NAME
from pipeline.kinds.base import Row, Target, WriteKind, describe
from pipeline.kinds.fields import STRICT, Bool, Key


class AtomicWrite(BaseModel):
    """One write of a unit: a write kind's name and its keyword arguments."""

    model_config = STRICT
    kind: Key
    args: dict[str, Any]


class Atomic(BaseModel):
    """Keyword arguments of ``atomic``."""

    model_config = STRICT
    writes: list[AtomicWrite] = Field(min_length=1)
    urgent: Bool = False


def validate(kwargs: dict[str, Any]) -> tuple[list[tuple[WriteKind[Any], BaseModel]], bool]:
    """The unit's writes, each with its kind and validated payload, and whether it asked to be
    written first; raises :class:`InvalidPayload` naming the write at fault."""
    try:
        unit = Atomic.model_validate(kwargs)
    except ValidationError as exc:
        raise InvalidPayload(f"{ATOMIC}: {describe(exc)}") from None
    writes: list[tuple[WriteKind[Any], BaseModel]] = []
    for index, write in enumerate(unit.writes):
        kind = BY_NAME.get(write.kind)
        if kind is None:
            unknown = f"unknown write kind {write.kind!r}"
            raise InvalidPayload(f"{ATOMIC}: writes.{index}.kind: {unknown}")
        try:
            writes.append((kind, kind.validate(write.args)))
        except ValidationError as exc:
            at = ("writes", index, "args")
            raise InvalidPayload(f"{ATOMIC}: {write.kind}: {describe(exc, at=at)}") from None
    return writes, unit.urgent


def parts(
    kwargs: dict[str, Any], default_version: int
) -> tuple[list[tuple[Target, list[Row]]], bool]:
    """The unit's rows, by target, and whether it asked to be written first; raises
    :class:`InvalidPayload` naming the write at fault."""
    writes, urgent = validate(kwargs)
    rows: dict[Target, list[Row]] = defaultdict(list)
    for kind, payload in writes:
        rows[kind.target].extend(kind.rows(payload, default_version))
    return list(rows.items()), urgent
