"""What a committed batch did for each of its jobs: rows applied, rows unchanged, references
missing, rows rejected.

A statement reports only the keys it did not apply (:class:`~pipeline.kinds.base.Report`), so
a batch that applied everything costs nothing here. A key sent by several jobs of one batch was
merged into one row before the statement: of its senders, only the one whose row was written
(for a field-by-field merge, whose field was written) applied it; the others were superseded in
the batch, which is what they would have been, one after the other, in any order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from pipeline.errors import DataError, MissingReference, PipelineError
from pipeline.kinds.base import Prepared, Report, Row, Target


class Receipt(TypedDict):
    """What a job returns once its rows are committed: what became of them."""

    batch_id: str | None  # None when the job had nothing to write
    rows: int  # rows the job sent (items; one per rubric version)
    applied: int  # inserted or changed
    unchanged: int  # a stale version, a re-delivery, a record already written the same way
    jobs: int  # jobs committed in the same transaction
    committed_at: str | None


@dataclass(slots=True)
class Tally:
    """One job's rows in one committed transaction."""

    size: int
    applied: int = 0
    unchanged: int = 0
    missing: list[str] = field(default_factory=list)  # the keys, described
    rejected: list[str] = field(default_factory=list)  # the keys, with why

    def settle(self) -> Tally:
        """Count as applied every row that was not reported otherwise."""
        self.applied = self.size - self.unchanged - len(self.missing) - len(self.rejected)
        return self


def tally(
    sizes: Sequence[int],
    prepared: Mapping[Target, Prepared],
    reports: Mapping[Target, Report],
) -> list[Tally]:
    """The tally of every job of a committed batch (``sizes``: each job's rows, by its index)."""
    tallies = [Tally(size) for size in sizes]
    for target, prep in prepared.items():
        report = reports[target]
        for key in report.unchanged:
            for index, _ in prep.senders(key):
                tallies[index].unchanged += 1
        for key in report.missing:
            for index, _ in prep.senders(key):
                tallies[index].missing.append(f"{target.name} {target.describe(key)}")
        for key, reason in report.rejected.items():
            for index, _ in prep.senders(key):
                tallies[index].rejected.append(f"{target.name} {target.describe(key)}: {reason}")
        _superseded(target, prep, report, tallies)
    return [t.settle() for t in tallies]


def _superseded(target: Target, prep: Prepared, report: Report, tallies: list[Tally]) -> None:
    """Count the rows of applied keys that another job's row of the same batch superseded."""
    if not prep.sent:
        return
    unapplied = report.unapplied()
    for key, senders in prep.sent.items():
        if key in unapplied:
            continue
        written, mask = prep.merged[key], report.fields.get(key)
        for index, row in senders:
            if not target.credited(row, written, mask):
                tallies[index].unchanged += 1


def _keys_of(prep: Prepared, keys: set[Row] | Mapping[Row, object], jobs: set[int]) -> list[Row]:
    """The ``keys`` that one of ``jobs`` sent."""
    return [key for key in keys if any(index in jobs for index, _ in prep.senders(key))]


def refuse_within(target: Target, prep: Prepared, report: Report, atomic: set[int]) -> None:
    """Raise, so the transaction rolls back, what must not commit: a conflicting definition, or
    a row of an atomic job (``atomic``: their indexes) that could not be applied. The bisection
    then isolates the job."""
    if report.conflicts:
        raise target.conflict(report.conflicts)
    if not atomic:
        return
    rejected = _keys_of(prep, report.rejected, atomic)
    if rejected:
        key = rejected[0]
        raise DataError(f"{target.name} {target.describe(key)}: {report.rejected[key]}")
    missing = _keys_of(prep, report.missing, atomic)
    if missing:
        raise MissingReference(
            f"{target.name} {target.describe(missing[0])} refers to rows that do not exist yet"
        )


def settled(
    kind: str, done: Tally, applied_earlier: int, batch_id: str, jobs: int, committed_at: str
) -> Receipt | PipelineError:
    """A committed job's receipt, or why it is not done (its other rows are committed).

    ``applied_earlier`` counts the rows an earlier transaction applied for this job (it was
    written again for a missing reference), so a receipt counts what the job applied in all."""
    applied = min(done.size, applied_earlier + done.applied)
    if done.rejected:
        return DataError(
            f"{len(done.rejected)} of {done.size} {kind} item(s) refused, e.g. {done.rejected[0]}"
        )
    if done.missing:
        error = MissingReference(
            f"{len(done.missing)} of {done.size} {kind} item(s) refer to rows that do not exist "
            f"yet, e.g. {done.missing[0]}"
        )
        error.applied = applied
        return error
    return Receipt(
        batch_id=batch_id,
        rows=done.size,
        applied=applied,
        unchanged=done.size - applied,
        jobs=jobs,
        committed_at=committed_at,
    )
