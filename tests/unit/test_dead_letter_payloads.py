"""A dead letter's payload is encoded for ``jsonb`` by a loop, whatever it holds: nesting too deep
for the encoder is refused with a clear error (the caller stores the raw bytes instead)."""

from __future__ import annotations

import json

import pytest

from pipeline.nesting import JOB_MAX_DEPTH, deeper_than
from pipeline.ops import dead_letters
from tests.undeliverable_jobs import deep_metadata


def test_a_dead_letter_payload_is_encoded_without_recursion() -> None:
    shallow = {"k": [deep_metadata(JOB_MAX_DEPTH - 2)]}
    assert json.loads(dead_letters.payload_json(shallow)) == shallow
    with pytest.raises(ValueError, match=f"nested deeper than {JOB_MAX_DEPTH} levels"):
        dead_letters.payload_json({"k": deep_metadata(5000)})
    # the conversion to JSON values is a loop: it takes what msgpack decodes, and more
    converted = dead_letters._jsonable({"k": [deep_metadata(5000), float("nan"), b"\x00", {1: 2}]})
    assert converted["k"][1:] == ["nan", "b'\\x00'", {"1": 2}]
    assert not deeper_than(converted, 5002) and deeper_than(converted, 5001)
