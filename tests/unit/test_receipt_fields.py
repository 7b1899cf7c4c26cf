"""One receipt: the dict a write job returns (what arq stores) and the model a producer reads
have the same fields, and the one reads the other."""

from __future__ import annotations

import datetime as dt
import typing

from pipeline.receipts import JobResult, Receipt
from pipeline.worker.outcomes import Tally, settled


def test_the_job_result_and_the_receipt_have_the_same_fields() -> None:
    assert list(typing.get_type_hints(JobResult)) == list(Receipt.model_fields)


def test_a_settled_job_result_reads_as_a_receipt() -> None:
    committed_at = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    result = settled(
        "update_scores", Tally(size=3, unchanged=1).settle(), 0, "b-1", 2, committed_at.isoformat()
    )
    assert isinstance(result, dict)
    receipt = Receipt.of(result)
    assert receipt == Receipt(
        batch_id="b-1", rows=3, applied=2, unchanged=1, jobs=2, committed_at=committed_at
    )
