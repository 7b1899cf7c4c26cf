"""The job serializer: msgpack round trips, pickle is refused."""

from __future__ import annotations

import datetime as dt
import pickle
import uuid

import pytest

from pipeline.errors import JobFailed
from pipeline.serialization import deserialize, serialize


def test_round_trips_plain_values_and_stringifies_uuid_and_datetime() -> None:
    ident = uuid.uuid4()
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    data = {"f": "update_scores", "k": {"id": ident, "at": when, "xs": [1, 2.5, None, "é"]}}
    assert deserialize(serialize(data)) == {
        "f": "update_scores",
        "k": {"id": str(ident), "at": "2026-01-02T03:04:05+00:00", "xs": [1, 2.5, None, "é"]},
    }


def test_exceptions_travel_as_data_and_come_back_as_job_failed() -> None:
    back = deserialize(serialize({"r": ValueError("bad score")}))["r"]
    assert isinstance(back, JobFailed)
    assert (back.kind, back.message) == ("ValueError", "bad score")


def test_pickled_payload_is_refused() -> None:
    payload = pickle.dumps({"f": "update_scores", "a": (), "k": {}, "t": 1, "et": 0})
    with pytest.raises(Exception):  # noqa: B017 - msgpack raises one of several errors
        result = deserialize(payload)
        # Should msgpack ever decode the bytes, they must not come back as a job.
        assert isinstance(result, dict) and "f" in result


def test_unknown_types_are_not_serialized() -> None:
    with pytest.raises(TypeError, match="cannot serialize object"):
        serialize({"k": object()})
