"""The seq derived for a transcript entry sent without one: stable, of the documented recipe,
in a range of its own, the same for one entry however its timestamp is written, and different
for entries that differ in anything."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pydantic
import pytest

from pipeline.kinds import BY_NAME
from pipeline.kinds.agent_tasks import TranscriptItem, derived_seq

BASE: dict[str, Any] = {
    "task_id": "TASK-1",
    "phase": "implement",
    "iteration": 2,
    "role": "response",
    "content": "Löschen → done",
    "timestamp": "2026-03-01T12:00:00.250000+00:00",
}


def seq(**changes: Any) -> int:
    """The derived seq of BASE with ``changes``."""
    return derived_seq(TranscriptItem.model_validate({**BASE, **changes}))


def by_the_recipe(fields: list[str]) -> int:
    """docs/write-kinds.md's recipe: a length-prefixed UTF-8 field each, blake2b of 8 bytes."""
    digest = hashlib.blake2b(digest_size=8)
    for field in fields:
        data = field.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big") + data)
    return -1 - (int.from_bytes(digest.digest(), "big") >> 1)


def test_the_seq_follows_the_documented_recipe_and_never_changes() -> None:
    micros = "1772366400250000"  # 2026-03-01T12:00:00.25Z in microseconds since 1970 UTC
    fields = ["TASK-1", "implement", "2", "response", "Löschen → done", micros]
    assert seq() == by_the_recipe(fields)
    # Pinned: a different value for an entry already stored would store it again when resent.
    assert seq() == -2296894954549607090


def test_one_instant_is_one_seq_whatever_its_offset() -> None:
    assert seq(timestamp="2026-03-01T13:00:00.25+01:00") == seq()
    assert seq(timestamp="2026-03-01T07:00:00.250-05:00") == seq()
    aware = dt.datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    assert seq(timestamp=aware) == seq()


def test_every_field_and_every_boundary_between_fields_counts() -> None:
    variants = [
        seq(),
        seq(task_id="TASK-2"),
        seq(phase="review"),
        seq(iteration=3),
        seq(role="chunk"),
        seq(content="Löschen → done "),
        seq(content=""),
        seq(timestamp="2026-03-01T12:00:00.250001+00:00"),
        seq(task_id="TASK-1i", phase="mplement"),  # the same characters, split elsewhere
        seq(task_id="TASK-", phase="1implement"),
    ]
    assert len(set(variants)) == len(variants)


def test_derived_seqs_are_negative_int8_and_do_not_collide() -> None:
    seqs = {seq(content=f"chunk {n}") for n in range(100_000)}
    assert len(seqs) == 100_000
    assert all(-(2**63) <= s <= -1 for s in seqs)


def test_the_first_and_last_instants_have_a_seq() -> None:
    # Converting these to UTC would leave the years a datetime can hold.
    first, last = (
        seq(timestamp="0001-01-01T00:00:00+05:00"),
        seq(timestamp="9999-12-31T23:59:59-05:00"),
    )
    assert first != last and first < 0 and last < 0


def test_an_entry_may_omit_seq_but_never_send_one_of_the_derived_range() -> None:
    kind = BY_NAME["append_transcripts"]
    payload = kind.validate({"transcripts": [BASE, {**BASE, "seq": None}, {**BASE, "seq": 4}]})
    rows = kind.rows(payload, 0)
    assert [row[3] for row in rows] == [seq(), seq(), 4]
    with pytest.raises(pydantic.ValidationError, match=r"transcripts\.0\.seq"):
        kind.validate({"transcripts": [{**BASE, "seq": -1}]})


def test_empty_jobs_are_valid_and_yield_no_rows() -> None:
    for name, items in (("append_transcripts", "transcripts"), ("record_events", "events")):
        kind = BY_NAME[name]
        assert kind.rows(kind.validate({items: []}), 0) == []
