"""What a write kind is: a payload model, the rows it yields, and the target statement they feed.

A :class:`Target` is one set-based statement against one table: its columns (sent as arrays and
``unnest``-ed), its key, its merge rule for two rows with the same key in one batch, and its
place in the foreign-key order. A :class:`WriteKind` is an arq function: it validates its keyword
arguments with a pydantic model and turns them into rows of a target. Several kinds may feed one
target (``update_scores`` and ``update_statuses`` both update ``nodes``), so each table is changed
by one sorted statement per batch and two workers never lock its rows in opposite orders.

The coalescer knows only these two classes; adding a kind never touches it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline.errors import InvalidPayload

Row = tuple[Any, ...]
Merge = Callable[[Row, Row], Row]
P = TypeVar("P", bound=BaseModel)


def describe(error: ValidationError, limit: int = 8, *, at: tuple[str | int, ...] = ()) -> str:
    """A one-line, value-free summary of a pydantic validation error (of what sits at ``at``)."""
    parts = [
        f"{'.'.join(str(p) for p in (*at, *e['loc'])) or '<payload>'}: {e['msg']}"
        for e in error.errors(include_url=False, include_input=False)[:limit]
    ]
    more = error.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def keep_first(old: Row, new: Row) -> Row:
    """Merge rule of insert-if-absent targets: the first row of a key stands."""
    return old


def newest(version_index: int) -> Merge:
    """Merge rule of last-write-wins targets: the row with the highest version stands."""

    def merge(old: Row, new: Row) -> Row:
        return new if new[version_index] > old[version_index] else old

    return merge


@dataclass(frozen=True, eq=False)
class Invalidation:
    """Statements run once at the end of a batch with the keys every target reported touching.

    The first of ``columns`` is the scope (the project). ``scope`` runs first, with the batch's
    distinct scope values: it may take locks, and its last statement returns the scope values
    that have anything to invalidate. ``statements`` then run with the keys in those scopes only,
    and not at all when there are none: sending every touched key costs more than the check.
    """

    name: str
    scope: tuple[str, ...]
    statements: tuple[str, ...]
    columns: tuple[str, ...]
    scope_clauses: tuple[TextClause, ...] = field(init=False, repr=False)
    clauses: tuple[TextClause, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.scope:
            raise ValueError(f"{self.name}: scope needs a statement that returns the scopes")
        object.__setattr__(self, "scope_clauses", tuple(text(s) for s in self.scope))
        object.__setattr__(self, "clauses", tuple(text(s) for s in self.statements))

    async def run(self, conn: AsyncConnection, keys: Sequence[Row]) -> None:
        """Run the statements with the (deduplicated, sorted) keys in scope as arrays."""
        scopes = sorted({key[0] for key in keys})
        if not scopes:
            return
        for clause in self.scope_clauses:
            result = await conn.execute(clause, {self.columns[0]: scopes})
        live = set(result.scalars())
        ordered = sorted({key for key in keys if key[0] in live})
        if not ordered:
            return
        params = dict(zip(self.columns, (list(c) for c in zip(*ordered, strict=True)), strict=True))
        for clause in self.clauses:
            await conn.execute(clause, params)


@dataclass(frozen=True, eq=False)
class Target:
    """Set-based SQL for one table: the rows of a batch, merged, sorted, sent as arrays.

    ``sql`` is a statement template (or a sequence of them, run in order, when one statement cannot
    do it all) in which ``{rows}`` stands for ``unnest(CAST(:col AS type[]), …) AS v(col, …)``.
    When ``reports_missing`` is set, the (last) statement returns the key of every row it could
    not apply because a row it refers to does not exist yet. ``lock``, when set, runs first, with
    ``:scopes`` the batch's distinct values of the key's first column in order: it takes the
    locks that keep two batches of this target from waiting on each other's rows.
    """

    name: str
    table: str
    order: int
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    sql: str | tuple[str, ...]
    merge: Merge = keep_first
    reports_missing: bool = False
    invalidates: Invalidation | None = None
    lock: str | None = None
    statements: tuple[TextClause, ...] = field(init=False, repr=False)
    lock_clause: TextClause | None = field(init=False, repr=False)
    key_of: Callable[[Row], Row] = field(init=False, repr=False)
    touched_of: Callable[[Row], Row] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = [name for name, _ in self.columns]
        unnest = ", ".join(f"CAST(:{name} AS {pg}[])" for name, pg in self.columns)
        rows = f"unnest({unnest}) AS v({', '.join(names)})"
        templates = (self.sql,) if isinstance(self.sql, str) else self.sql
        statements = tuple(text(t.format(rows=rows)) for t in templates)
        object.__setattr__(self, "statements", statements)
        object.__setattr__(self, "lock_clause", None if self.lock is None else text(self.lock))
        getter = operator.itemgetter(*(names.index(k) for k in self.key))
        key_of = getter if len(self.key) > 1 else (lambda row: (getter(row),))
        object.__setattr__(self, "key_of", key_of)
        if self.invalidates is not None:
            touched = operator.itemgetter(*(names.index(c) for c in self.invalidates.columns))
            object.__setattr__(self, "touched_of", touched)

    def touched(self, rows: Iterable[Row]) -> list[Row]:
        """The keys of ``rows`` that this target's invalidation is run with."""
        touched_of = self.touched_of
        return [touched_of(row) for row in rows]

    def prepare(self, rows: Iterable[Row]) -> list[Row]:
        """One row per key (merged by the target's rule), sorted by key."""
        merged: dict[Row, Row] = {}
        key_of, merge = self.key_of, self.merge
        for row in rows:
            key = key_of(row)
            old = merged.get(key)
            merged[key] = row if old is None else merge(old, row)
        return [merged[key] for key in sorted(merged)]

    async def write(self, conn: AsyncConnection, rows: Sequence[Row]) -> set[Row]:
        """Execute the statements for prepared rows; the keys they could not apply."""
        names = [name for name, _ in self.columns]
        if self.lock_clause is not None:
            scope = names.index(self.key[0])
            await conn.execute(self.lock_clause, {"scopes": sorted({row[scope] for row in rows})})
        params = dict(zip(names, (list(c) for c in zip(*rows, strict=True)), strict=True))
        for statement in self.statements:
            result = await conn.execute(statement, params)
        if not self.reports_missing:
            return set()
        return {tuple(r) for r in result}


@dataclass(frozen=True)
class WriteKind(Generic[P]):
    """An arq job function: its payload model and how a payload becomes rows of its target.

    ``rows`` receives the validated payload and the default version (the job's enqueue time in
    microseconds), used for items that carry no version of their own.
    """

    name: str
    payload: type[P]
    target: Target
    rows: Callable[[P, int], list[Row]]
    adapter: TypeAdapter[P] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter", TypeAdapter(self.payload))

    def validate(self, kwargs: dict[str, Any]) -> P:
        """The payload, or pydantic's ValidationError."""
        return self.adapter.validate_python(kwargs)

    def parse(self, kwargs: dict[str, Any]) -> P:
        """The payload, or :class:`InvalidPayload` with a one-line, value-free reason."""
        try:
            return self.validate(kwargs)
        except ValidationError as exc:
            raise InvalidPayload(f"{self.name}: {describe(exc)}") from None

    @staticmethod
    def urgent(payload: BaseModel) -> bool:
        """Whether the job asked to be written ahead of everything pending (``urgent=True``)."""
        # Read from the field values: getattr on a pydantic model without the field raises and
        # catches inside, which cost more than the rest of the job's checks, per job.
        return bool(payload.__dict__.get("urgent", False))
