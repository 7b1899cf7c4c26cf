"""The job serializer: msgpack round trips, pickle is refused; the worker's deserializer turns
every job that cannot run into an undeliverable job, and reads results as results."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import uuid
from typing import Any

import msgpack
import pytest
from arq.jobs import deserialize_result, serialize_result
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import InvalidPayload, JobFailed, PipelineError
from pipeline.kinds import KINDS
from pipeline.nesting import JOB_MAX_DEPTH
from pipeline.serialization import (
    OVERSIZED,
    UNDELIVERABLE,
    UNDELIVERED,
    JobDeserializer,
    Undeliverable,
    deserialize,
    serialize,
)
from tests.undeliverable_jobs import CASES, ET, Case, deep_metadata, job, now_ms


def test_round_trips_plain_values_and_stringifies_uuid_and_datetime() -> None:
    ident = uuid.uuid4()
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    data = {"f": "update_scores", "k": {"id": ident, "at": when, "xs": [1, 2.5, None, "é"]}}
    assert deserialize(serialize(data)) == {
        "f": "update_scores",
        "k": {"id": str(ident), "at": "2026-01-02T03:04:05+00:00", "xs": [1, 2.5, None, "é"]},
    }


def result_of(outcome: Any, *, success: bool = False, kwargs: Any = None) -> bytes:
    """arq's result record of a job that ended with ``outcome``, as the worker writes it."""
    data = serialize_result(
        "insert_nodes",
        (),
        {"project_id": "p"} if kwargs is None else kwargs,
        1,
        ET,
        success,
        outcome,
        ET,
        ET + 5,
        "ref",
        "q",
        "id1",
        serializer=serialize,
    )
    assert data is not None
    return data


def dead_lettered(error: PipelineError, letter_id: int) -> PipelineError:
    error.dead_letter_id = letter_id
    return error


@pytest.mark.parametrize(
    ("error", "plain"),
    [
        (
            dead_lettered(InvalidPayload("insert_nodes: nodes: Field required"), 17),
            ["InvalidPayload", "insert_nodes: nodes: Field required", 17],
        ),
        (InvalidPayload("not recorded yet"), ["InvalidPayload", "not recorded yet", None]),
        (JobFailed("Conflict", "first stands", 4), ["Conflict", "first stands", 4]),
        (ValueError("a bug"), ["ValueError", "a bug", None]),
        (TimeoutError(), ["TimeoutError", "", None]),
        (asyncio.CancelledError(), ["CancelledError", "", None]),
    ],
    ids=["dead-lettered", "no-letter", "job-failed", "bug", "timeout", "cancelled"],
)
def test_a_failed_result_is_a_plain_map_and_comes_back_as_job_failed(
    error: BaseException, plain: list[Any]
) -> None:
    data = result_of(error)
    raw = msgpack.unpackb(data)  # what a producer in another language reads
    assert raw["s"] is False
    assert raw["r"] == dict(zip(("error", "message", "dead_letter_id"), plain, strict=True))
    for read in (deserialize, DESERIALIZE):
        result = deserialize_result(data, deserializer=read)
        assert isinstance(result.result, JobFailed) and result.success is False
        back = result.result
        assert [back.kind, back.message, back.dead_letter_id] == plain
        assert str(back) == f"{plain[0]}: {plain[1]}"


def test_a_failure_map_anywhere_else_is_left_as_it_is() -> None:
    shaped = {"error": "InvalidPayload", "message": "m", "dead_letter_id": 3}
    # A job's own result or payload that looks like one, a map with a fourth key, a bad type.
    assert deserialize(result_of(shaped, success=True))["r"] == shaped
    assert deserialize(result_of(InvalidPayload("x"), kwargs={"r": shaped}))["k"] == {"r": shaped}
    for other in ({**shaped, "more": 1}, {**shaped, "dead_letter_id": "3"}, {**shaped, "error": 1}):
        assert deserialize(result_of(other))["r"] == other
    job_map = {"t": None, "f": "insert_nodes", "a": [], "k": {"s": False, "r": shaped}, "et": ET}
    assert deserialize(serialize(job_map)) == job_map
    assert DESERIALIZE(serialize(job_map))["k"] == {"s": False, "r": shaped}
    partial = {"s": False, "r": shaped}  # not an arq result: some of its keys are missing
    assert deserialize(serialize(partial)) == partial


def test_the_extension_record_of_older_workers_is_still_read() -> None:
    old = msgpack.ExtType(1, msgpack.packb(["InvalidPayload", "bad score"]))
    record = msgpack.unpackb(result_of("placeholder"))
    record["r"] = old
    for read in (deserialize, DESERIALIZE):
        back = deserialize_result(msgpack.packb(record), deserializer=read).result
        assert isinstance(back, JobFailed)
        assert (back.kind, back.message, back.dead_letter_id) == (
            "InvalidPayload",
            "bad score",
            None,
        )


def test_pickled_payload_is_refused() -> None:
    payload = pickle.dumps({"f": "update_scores", "a": (), "k": {}, "t": 1, "et": 0})
    with pytest.raises(Exception):  # noqa: B017 - msgpack raises one of several errors
        result = deserialize(payload)
        # Should msgpack ever decode the bytes, they must not come back as a job.
        assert isinstance(result, dict) and "f" in result


def test_unknown_types_are_not_serialized() -> None:
    with pytest.raises(TypeError, match="cannot serialize object"):
        serialize({"k": object()})


FUNCTIONS = [kind.name for kind in KINDS] + [UNDELIVERABLE]
DESERIALIZE = JobDeserializer(1_048_576, FUNCTIONS)


def letter_of(job: dict[str, Any]) -> Undeliverable:
    """The :class:`Undeliverable` an undeliverable job carries."""
    assert (job["f"], job["a"], list(job["k"])) == (UNDELIVERABLE, [], [UNDELIVERED])
    letter = job["k"][UNDELIVERED]
    assert isinstance(letter, Undeliverable)
    return letter


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_job_that_cannot_run_becomes_an_undeliverable_job(case: Case) -> None:
    job = DESERIALIZE(case.data)
    letter = letter_of(job)
    assert (type(letter.error).__name__, str(letter.error)) == (case.error, case.reason)
    assert (letter.function or UNDELIVERABLE) == case.function
    assert (letter.payload, letter.raw) == (case.payload, case.raw)
    assert job["t"] is None
    # arq's enqueue time is kept when it can be read, else the job is as old as now
    assert job["et"] == ET or abs(job["et"] - now_ms()) < 60_000
    assert case.data not in repr(letter).encode()  # arq logs the arguments: never the bytes


def test_the_enqueue_time_and_try_are_kept() -> None:
    job = DESERIALIZE(serialize({"t": 3, "f": "nope", "a": [], "k": {}, "et": ET}))
    assert (job["t"], job["et"], letter_of(job).payload) == (3, ET, {})


@given(st.binary(max_size=200))
def test_no_bytes_make_the_deserializer_raise(data: bytes) -> None:
    job = DESERIALIZE(data)
    assert isinstance(job, dict) and job["f"] in FUNCTIONS


def test_a_good_job_passes_unchanged() -> None:
    data = job("update_scores", kwargs={"project_id": "p", "scores": [{"node_id": "a"}]})
    assert DESERIALIZE(data) == deserialize(data)


def test_an_oversized_job_keeps_its_function_and_loses_its_arguments() -> None:
    small = JobDeserializer(1024, FUNCTIONS)
    data = job(kwargs={"project_id": "p", "nodes": [{"node_id": "n", "label": "x" * 2000}]})
    assert small(data) == {**deserialize(data), "a": [], "k": {OVERSIZED: len(data)}}
    unknown = small(job("nope", kwargs={"x": "y" * 2000}))
    letter = letter_of(unknown)
    assert letter.payload is None and letter.raw is not None and len(letter.raw) == 1024
    assert str(letter.error).endswith(
        f"; the job is {len(job('nope', kwargs={'x': 'y' * 2000}))} bytes, its first 1024 are kept"
    )


def test_a_job_nested_deeper_than_the_limit_is_invalid() -> None:
    # the job map, its kwargs, the nodes and a node are 4 levels above the metadata
    def nodes_job(levels: int) -> bytes:
        node = {"node_id": "n", "label": "n", "metadata": deep_metadata(levels)}
        return job(kwargs={"project_id": "p", "nodes": [node]})

    deepest = nodes_job(JOB_MAX_DEPTH - 4)
    assert DESERIALIZE(deepest) == deserialize(deepest)
    too_deep = nodes_job(JOB_MAX_DEPTH - 3)
    letter = letter_of(DESERIALIZE(too_deep))
    assert isinstance(letter.error, InvalidPayload)
    assert str(letter.error) == f"insert_nodes: nested deeper than {JOB_MAX_DEPTH} levels"
    assert (letter.function, letter.payload, letter.raw) == ("insert_nodes", None, too_deep)


@pytest.mark.parametrize("function", ["insert_nodes", UNDELIVERABLE, "<unknown>", "nope"])
def test_results_are_read_as_results(function: str) -> None:
    data = serialize_result(
        function,
        (),
        {"x": 1},
        1,
        ET,
        False,
        dead_lettered(InvalidPayload("bad"), 9),
        ET,
        ET + 5,
        "r",
        "q",
        "id1",
        serializer=serialize,
    )
    assert data is not None
    result = deserialize_result(data, deserializer=DESERIALIZE)
    assert (result.function, result.kwargs, result.success) == (function, {"x": 1}, False)
    assert isinstance(result.result, JobFailed)
    assert (result.result.kind, result.result.dead_letter_id) == ("InvalidPayload", 9)


def test_an_undeliverable_job_serializes_its_reason_not_its_bytes() -> None:
    letter = letter_of(DESERIALIZE(CASES[0].data))
    back = deserialize(serialize({"k": {UNDELIVERED: letter}}))
    assert back == {
        "k": {UNDELIVERED: {"error": "UndeliverableJob", "reason": "pickle is not accepted"}}
    }
