"""What a write kind is: a payload model, the rows it yields, and the target statement they feed.

A :class:`Target` is one set-based statement against one table: its columns (sent as arrays and
``unnest``-ed), its key, its merge rule for two rows with the same key in one batch, and its
place in the foreign-key order. A :class:`WriteKind` is an arq function: it validates its keyword
arguments with a pydantic model and turns them into rows of a target. Several kinds may feed one
target (``update_scores`` and ``update_statuses`` both update ``nodes``), so each table is changed
by one sorted statement per batch and two workers never lock its rows in opposite orders. The
order of targets comes from the schema: a table's targets run after those of the tables it
references (``metadata.sorted_tables``), and among one table's targets one that ``follows``
another runs after it.

An *immutable* target holds records that are defined once (a rubric version, an event): two rows
of one key that differ, in one batch or against the stored row, are a :class:`Conflict`, and
an identical row is a no-op. The coalescer knows only these classes; adding a kind never
touches it.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline.errors import Conflict, InvalidPayload
from pipeline.schema import metadata
from pipeline.schema.audit import ACTORS_SETTING, AUDITED, CHANGES_SETTING, entity_id

Row = tuple[Any, ...]
_SET_ACTORS = text(
    f"SELECT set_config('{ACTORS_SETTING}', :actors, true), "
    f"set_config('{CHANGES_SETTING}', :changes, true)"
)
Merge = Callable[[Row, Row], Row]
P = TypeVar("P", bound=BaseModel)
#: Each table's place in the foreign-key order: a table after every table it references.
TABLE_ORDER: dict[str, int] = {t.name: i for i, t in enumerate(metadata.sorted_tables)}


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


def same_json(a: Any, b: Any) -> bool:
    """Whether two decoded JSON values are equal the way ``jsonb`` compares them: numbers by
    value, a boolean never equal to a number, objects whatever their key order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same_json, a, b))
    return type(a) is type(b) and bool(a == b)


def stored_differs(
    table: str, key: Sequence[str], compared: Sequence[str], json_columns: Sequence[str] = ()
) -> str:
    """The conflicts statement of an immutable target whose columns are its table's: the key of
    every sent row whose stored row differs, and which columns differ (JSON as ``jsonb``)."""
    sent = {c: f"CAST(v.{c} AS jsonb)" if c in json_columns else f"v.{c}" for c in compared}
    differ = ", ".join(f"CASE WHEN t.{c} IS DISTINCT FROM {sent[c]} THEN '{c}' END" for c in sent)
    on = " AND ".join(f"t.{k} = v.{k}" for k in key)
    # Only the target's own column and table names are formatted in: no input reaches this SQL.
    return f"""
        SELECT {", ".join(key)}, 'differs in ' || array_to_string(differ, ', ') FROM (
            SELECT {", ".join(f"v.{k}" for k in key)}, array_remove(ARRAY[{differ}], NULL) AS differ
            FROM {{rows}} JOIN {table} t ON {on}
        ) d WHERE cardinality(differ) > 0
    """  # noqa: S608


def column_index(target: str, columns: Sequence[tuple[str, str]], column: str) -> int:
    """The position of ``column`` in a target's rows; ValueError naming the target if absent."""
    names = [name for name, _ in columns]
    if column not in names:
        raise ValueError(f"{target}: {column!r} is not one of its columns {names}")
    return names.index(column)


@dataclass(frozen=True)
class Newest:
    """Merge rule of last-write-wins targets: the row with the highest ``column`` stands."""

    column: str

    def bind(self, target: str, columns: Sequence[tuple[str, str]]) -> Merge:
        """The rule over rows of a target with ``columns``, by position (no lookup per row)."""
        version = column_index(target, columns, self.column)

        def merge(old: Row, new: Row) -> Row:
            return new if new[version] > old[version] else old

        return merge


def newest(column: str) -> Newest:
    """Merge rule of last-write-wins targets: the row with the highest ``column`` stands."""
    return Newest(column)


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


@dataclass
class Report:
    """What a target's statements did not apply, by key (every other key sent was applied).

    ``missing``: refers to a row that does not exist yet (the job is retried). ``unchanged``:
    nothing to change (a stale version, a re-delivery, a record already written the same way).
    ``conflicts``: an immutable record written before with a different definition (what differs,
    value-free). ``rejected``: refused for a reason of its own (a node moved under its own
    descendant). ``touched``: more keys for the target's invalidation (a moved node's old
    parent). ``fields``: for keys sent with a detail request, which of the row's fields applied
    (a bit mask in the order of the target's ``fields``).
    """

    missing: set[Row] = field(default_factory=set)
    unchanged: set[Row] = field(default_factory=set)
    conflicts: dict[Row, str] = field(default_factory=dict)
    rejected: dict[Row, str] = field(default_factory=dict)
    touched: list[Row] = field(default_factory=list)
    fields: dict[Row, int] = field(default_factory=dict)

    def unapplied(self) -> set[Row]:
        """Every key that was not applied."""
        return self.missing | self.unchanged | self.conflicts.keys() | self.rejected.keys()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A target's rows of one batch: one per key, merged, sorted; ``collided`` when some key
    was sent more than once (its rows were merged)."""

    rows: list[Row]
    merged: dict[Row, Row]
    collided: bool


@dataclass(frozen=True, eq=False)
class Target:
    """Set-based SQL for one table: the rows of a batch, merged, sorted, sent as arrays.

    ``sql`` is a statement template (or a sequence of them, run in order, when one statement cannot
    do it all) in which ``{rows}`` stands for ``unnest(CAST(:col AS type[]), …) AS v(col, …)``,
    ``{keys}`` for the same of the key's columns only (``AS k(…)``) and ``{size}`` for the
    number of rows. When ``reports`` is set, the (last) statement returns ``(problem, *key)``
    rows for the keys it did not apply (see :class:`Report`): ``'missing'``, ``'unchanged'``,
    ``'present'`` (an immutable target did not insert it because its key exists: unchanged,
    unless the stored definition differs), ``'rejected'`` (with a reason after the key),
    ``'touched'`` (a key for the invalidation) and ``'fields'`` (with a bit mask after the key).
    A statement reports only what it did not apply, so the common case returns no rows.
    ``lock``, when set, runs first, with ``:scopes`` the batch's distinct values of the key's
    first column in order: it takes the locks that keep two batches of this target from waiting
    on each other's rows. ``actors``, when set, names the columns of the audited entity's id:
    each batch first hands the audit trigger the ``actor`` column of its rows (see
    :mod:`pipeline.schema.audit`).

    ``immutable`` targets merge two rows of one key only when they are the same definition
    (``json_columns`` compared as JSON values) and raise :class:`Conflict` otherwise. Their
    ``conflicts`` statement (over ``{rows}``: the present rows only; by default every column
    compared with the table's column of the same name) returns ``(*key, detail)`` for every row
    whose stored definition differs. It runs as a statement of its own, so its snapshot sees a
    row that another transaction committed while the insert waited for it.

    ``order`` sorts the targets of a batch: by the table's place in the foreign-key order, then
    after the target it ``follows`` (one of its table whose rows it reads), then by name.
    """

    name: str
    table: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    sql: str | tuple[str, ...]
    #: A merge rule over rows, or :class:`Newest` by column name (bound to a position once).
    merge: Merge | Newest = keep_first
    reports: bool = False
    invalidates: Invalidation | None = None
    lock: str | None = None
    immutable: bool = False
    conflicts: str | None = None
    json_columns: tuple[str, ...] = ()
    #: Whether a row sent for a key counts as applied when its key was applied (given the row
    #: that was written, and the key's ``fields`` mask if one was reported). By default the row
    #: that stood in the batch's merge is the one applied; the others were superseded.
    credit: Callable[[Row, Row, int | None], bool] | None = None
    actors: tuple[str, ...] | None = None
    #: With ``actors``: the ``table.column`` names a batch's statement may change, when it can
    #: tell (the audit trigger then skips an update of quiet columns only unread).
    changes: Callable[[Sequence[Row]], Sequence[str]] | None = None
    #: A target of the same table that runs first in a batch (its rows may be this one's input).
    follows: Target | None = None
    order: tuple[int, int, str] = field(init=False, repr=False)
    row_merge: Merge = field(init=False, repr=False)
    statements: tuple[TextClause, ...] = field(init=False, repr=False)
    lock_clause: TextClause | None = field(init=False, repr=False)
    conflicts_clause: TextClause | None = field(init=False, repr=False)
    key_of: Callable[[Row], Row] = field(init=False, repr=False)
    touched_of: Callable[[Row], Row] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.table not in TABLE_ORDER:
            raise ValueError(f"{self.name}: table {self.table!r} is not in the schema")
        depth = 0
        if self.follows is not None:
            if self.follows.table != self.table:
                raise ValueError(f"{self.name}: follows a target of another table")
            depth = self.follows.order[1] + 1
        object.__setattr__(self, "order", (TABLE_ORDER[self.table], depth, self.name))
        merge = self.merge
        if isinstance(merge, Newest):
            merge = merge.bind(self.name, self.columns)
        object.__setattr__(self, "row_merge", merge)
        names = [name for name, _ in self.columns]
        key = [column_index(self.name, self.columns, k) for k in self.key]
        arrays = {name: f"CAST(:{name} AS {pg}[])" for name, pg in self.columns}
        parts = {
            "rows": f"unnest({', '.join(arrays.values())}) AS v({', '.join(names)})",
            "keys": f"unnest({', '.join(arrays[k] for k in self.key)}) AS k({', '.join(self.key)})",
            "size": f"cardinality({arrays[self.key[0]]})",
        }
        templates = (self.sql,) if isinstance(self.sql, str) else self.sql
        statements = tuple(text(t.format(**parts)) for t in templates)
        object.__setattr__(self, "statements", statements)
        object.__setattr__(self, "lock_clause", None if self.lock is None else text(self.lock))
        conflicts = self.conflicts
        if self.immutable:
            if not self.reports or self.merge is not keep_first:
                raise ValueError(f"{self.name}: an immutable target reports and keeps the first")
            object.__setattr__(self, "row_merge", self._same_definition)
            if conflicts is None:
                compared = [name for name in names if name not in self.key]
                conflicts = stored_differs(self.table, self.key, compared, self.json_columns)
        elif conflicts is not None:
            raise ValueError(f"{self.name}: only an immutable target has a conflicts statement")
        clause = None if conflicts is None else text(conflicts.format(**parts))
        object.__setattr__(self, "conflicts_clause", clause)
        unknown = set(self.json_columns) - set(names)
        if unknown:
            raise ValueError(f"{self.name}: json_columns {sorted(unknown)} are not columns")
        getter = operator.itemgetter(*key)
        key_of = getter if len(self.key) > 1 else (lambda row: (getter(row),))
        object.__setattr__(self, "key_of", key_of)
        if self.invalidates is not None:
            at = [column_index(self.name, self.columns, c) for c in self.invalidates.columns]
            touched = operator.itemgetter(*at)
            object.__setattr__(self, "touched_of", touched)
        if self.actors is not None and self.table not in AUDITED:
            raise ValueError(f"{self.name}: actors are for audited tables only")
        if self.changes is not None and self.actors is None:
            raise ValueError(f"{self.name}: changes are handed over with the actors")

    def actors_of(self, rows: Sequence[Row]) -> str:
        """The audit trigger's actors setting for ``rows``: JSON of each named actor by entity."""
        names = [name for name, _ in self.columns]
        ids = [names.index(c) for c in self.actors or ()]
        actor = names.index("actor")
        named = {entity_id([row[i] for i in ids]): row[actor] for row in rows if row[actor]}
        return json.dumps({AUDITED[self.table][0]: named})

    def touched(self, rows: Iterable[Row]) -> list[Row]:
        """The keys of ``rows`` that this target's invalidation is run with."""
        touched_of = self.touched_of
        return [touched_of(row) for row in rows]

    def prepare(self, groups: Iterable[Sequence[Row]]) -> Prepared:
        """One row per key (merged by the target's rule), sorted by key; ``groups`` are the rows
        of each submission, in the batch's order."""
        merged: dict[Row, Row] = {}
        sent = 0
        key_of, merge = self.key_of, self.row_merge
        for rows in groups:
            sent += len(rows)
            for row in rows:
                key = key_of(row)
                old = merged.get(key)
                merged[key] = row if old is None else merge(old, row)
        return Prepared([merged[key] for key in sorted(merged)], merged, len(merged) < sent)

    def merged_rows(self, rows: Sequence[Row]) -> list[Row]:
        """:meth:`prepare` of one submission's rows: what the statement would be sent."""
        return self.prepare([rows]).rows

    def credited(self, row: Row, written: Row, fields: int | None) -> bool:
        """Whether ``row``, sent for a key that was applied, is what was applied."""
        return row is written if self.credit is None else self.credit(row, written, fields)

    def differences(self, old: Row, new: Row) -> list[str]:
        """The columns in which two rows differ (``json_columns`` compared as JSON values)."""
        if old == new:
            return []
        return [
            name
            for (name, _), a, b in zip(self.columns, old, new, strict=True)
            if a != b
            and not (
                name in self.json_columns
                and isinstance(a, str)
                and isinstance(b, str)
                and same_json(json.loads(a), json.loads(b))
            )
        ]

    def _same_definition(self, old: Row, new: Row) -> Row:
        """The merge of an immutable target: one definition sent twice is one row."""
        differ = self.differences(old, new)
        if differ:
            raise Conflict(
                f"{self.name} {self.describe(self.key_of(old))}: sent twice with different "
                f"definitions (differs in {', '.join(differ)}); the first stands"
            )
        return old

    def describe(self, key: Row) -> str:
        """A key as ``(column=value, …)``: an identity, so fit for a log or a dead letter."""
        return "(" + ", ".join(f"{k}={v}" for k, v in zip(self.key, key, strict=True)) + ")"

    def conflict(self, conflicts: Mapping[Row, str]) -> Conflict:
        """The error for keys whose stored definition differs from the one sent."""
        key = min(conflicts)
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        return Conflict(
            f"{self.name} {self.describe(key)}: a different definition is already written "
            f"({conflicts[key]}){more}; the first stands"
        )

    def _params(self, rows: Sequence[Row]) -> dict[str, list[Any]]:
        names = [name for name, _ in self.columns]
        return dict(zip(names, (list(c) for c in zip(*rows, strict=True)), strict=True))

    async def write(self, conn: AsyncConnection, rows: Sequence[Row]) -> Report:
        """Execute the statements for prepared rows; what they did not apply."""
        if self.lock_clause is not None:
            scope = [name for name, _ in self.columns].index(self.key[0])
            await conn.execute(self.lock_clause, {"scopes": sorted({row[scope] for row in rows})})
        if self.actors is not None:
            # Every time, even with no actor: a batch's earlier statement may have set one.
            changes = ",".join(self.changes(rows)) if self.changes is not None else ""
            await conn.execute(_SET_ACTORS, {"actors": self.actors_of(rows), "changes": changes})
        params = self._params(rows)
        for statement in self.statements:
            result = await conn.execute(statement, params)
        report = Report()
        if not self.reports:
            return report
        present: set[Row] = set()
        size = len(self.key)
        for problem, *rest in result.all():  # one fetch, not one per row
            key = tuple(rest[:size])
            if problem == "missing":
                report.missing.add(key)
            elif problem == "unchanged":
                report.unchanged.add(key)
            elif problem == "present":
                present.add(key)
            elif problem == "rejected":
                report.rejected[key] = str(rest[size])
            elif problem == "touched":
                report.touched.append(key)
            elif problem == "fields":
                report.fields[key] = int(rest[size])
            else:
                raise ValueError(f"{self.name}: a statement reported {problem!r}")
        if present and self.conflicts_clause is not None:
            key_of = self.key_of
            sent = self._params([row for row in rows if key_of(row) in present])
            differing = await conn.execute(self.conflicts_clause, sent)
            report.conflicts = {tuple(key): detail for *key, detail in differing}
        report.unchanged |= present - report.conflicts.keys()
        return report


@dataclass(frozen=True)
class WriteKind(Generic[P]):
    """An arq job function: its payload model and how a payload becomes rows of its target.

    ``rows`` receives the validated payload and the default version (the job's enqueue time in
    microseconds), used for items that carry no version of their own. ``items`` names the payload
    field whose list holds the job's items, one row each (``None``: the job is one row); the
    worker's item limit counts those rows.
    """

    name: str
    payload: type[P]
    target: Target
    rows: Callable[[P, int], list[Row]]
    items: str | None = None
    adapter: TypeAdapter[P] = field(init=False, repr=False)
    #: The type of one item of ``items`` (what a coalescing producer validates one call by).
    item_type: Any = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.items is not None:
            found = self.payload.model_fields.get(self.items)
            if found is None or get_origin(found.annotation) is not list:
                raise ValueError(f"{self.name}: items {self.items!r} is not a list field")
            (item,) = get_args(found.annotation)
            object.__setattr__(self, "item_type", item)
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
