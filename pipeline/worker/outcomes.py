"""What a committed batch did for each of its jobs: rows applied, rows unchanged, references
missing, rows rejected.

A statement reports only the keys it did not apply (:class:`~pipeline.kinds.base.Report`), so
a batch that applied everything costs nothing here. A key sent by several jobs of one batch was
merged into one row before the statement: of its senders, only the one whose row was written
(for a field-by-field merge, whose field was written) applied it; the others were superseded in
the batch, which is what they would have been, one after the other, in any order.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.errors import DataError, MissingReference, PipelineError
from pipeline.kinds.base import Prepared, Report, Row, Target
from pipeline.receipts import JobResult


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
    parts: Sequence[Sequence[tuple[Target, Sequence[Row]]]],
    prepared: Mapping[Target, Prepared],
    reports: Mapping[Target, Report],
) -> list[Tally]:
    """The tally of every job of a committed batch (``parts``: each job's rows by target).

    A target whose statement applied every key it was sent, none of them sent twice, costs
    nothing; otherwise its rows are looked at once each."""
    tallies = [Tally(sum(len(rows) for _, rows in job)) for job in parts]
    for target, prep in prepared.items():
        report = reports[target]
        unapplied = report.unapplied()
        if not unapplied and not prep.collided:
            continue
        for index, job in enumerate(parts):
            for part_target, rows in job:
                if part_target is target:
                    _count(target, prep, report, unapplied, rows, tallies[index])
    return [t.settle() for t in tallies]


def _count(
    target: Target,
    prep: Prepared,
    report: Report,
    unapplied: set[Row],
    rows: Sequence[Row],
    done: Tally,
) -> None:
    """Count one job's rows of one target that were not applied, or were superseded by another
    row of the same key in the batch (a row is applied only if it is the one written, unless the
    target credits fields of merged rows)."""
    key_of, merged = target.key_of, prep.merged
    keys = list(map(key_of, rows))
    if not (report.missing or report.rejected or (report.fields and target.credit)):
        # The common case, at C speed: unchanged in the table, or not the row written.
        stale = map(report.unchanged.__contains__, keys)
        superseded = map(operator.is_not, rows, map(merged.__getitem__, keys))
        done.unchanged += sum(map(operator.or_, stale, superseded))
        return
    fields = report.fields
    for row, key in zip(rows, keys, strict=True):
        if key in unapplied:
            if key in report.missing:
                done.missing.append(f"{target.name} {target.describe(key)}")
            elif key in report.rejected:
                reason = report.rejected[key]
                done.rejected.append(f"{target.name} {target.describe(key)}: {reason}")
            else:
                done.unchanged += 1
        elif merged[key] is not row and not target.credited(row, merged[key], fields.get(key)):
            done.unchanged += 1


def refuse_within(
    target: Target,
    report: Report,
    atomic: Sequence[Sequence[tuple[Target, Sequence[Row]]]],
) -> None:
    """Raise, so the transaction rolls back, what must not commit: a conflicting definition, or
    a row of an atomic job (``atomic``: the rows of each) that could not be applied. The
    bisection then isolates the job."""
    if report.conflicts:
        raise target.conflict(report.conflicts)
    if not atomic or not (report.missing or report.rejected):
        return
    key_of = target.key_of
    sent = {key_of(row) for job in atomic for t, rows in job if t is target for row in rows}
    for key in sorted(sent & report.rejected.keys()):
        raise DataError(f"{target.name} {target.describe(key)}: {report.rejected[key]}")
    for key in sorted(sent & report.missing):
        raise MissingReference(
            f"{target.name} {target.describe(key)} refers to rows that do not exist yet"
        )


def settled(
    kind: str, done: Tally, applied_earlier: int, batch_id: str, jobs: int, committed_at: str
) -> JobResult | PipelineError:
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
    return JobResult(
        batch_id=batch_id,
        rows=done.size,
        applied=applied,
        unchanged=done.size - applied,
        jobs=jobs,
        committed_at=committed_at,
    )
