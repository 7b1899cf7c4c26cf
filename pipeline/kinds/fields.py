"""Field types shared by the payload models: bounded keys, text PostgreSQL accepts, strict
numbers and booleans, timestamps only as ISO 8601 text, JSON objects that encode to valid
``jsonb`` and nest at most :data:`~pipeline.nesting.JSON_MAX_DEPTH` levels.

pydantic's lax mode would take ``True`` for 1, ``"5"`` for 5 and ``1700000000`` for a time; the
number and boolean types here are strict (an integer still passes for a float), and a timestamp
is an ISO 8601 string with a time zone, or an aware ``datetime`` from a Python producer.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AllowInfNan,
    AwareDatetime,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    WithJsonSchema,
)

from pipeline.nesting import JSON_MAX_DEPTH, deeper_than

STRICT = ConfigDict(extra="forbid", str_strip_whitespace=False, allow_inf_nan=False)
MAX_VERSION = 2**63 - 1
MAX_INT32 = 2**31 - 1
#: A timestamp in the shapes the parser reads, ending in a zone: ``Z``, or an offset of hours up
#: to 23 and minutes, with or without a colon, signed ``+``, ``-`` or U+2212 (read as ``-``). The
#: values (month 13, second 60) are left to ``format: date-time``. The lookahead ends the match
#: where ``$`` would not in Python's ``re``, which lets ``$`` match before a final newline.
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt _][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?"
    r"(?:[Zz]|[+\-\u2212](?:[01][0-9]|2[0-3]):?[0-5][0-9])(?![\s\S])"
)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL (\\x00) characters")
    return value


def to_json(value: dict[str, Any]) -> str:
    """Compact JSON text for a ``jsonb`` column."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    # Measured first: the encoder recurses, and would run out of stack on deep input.
    if deeper_than(value, JSON_MAX_DEPTH):
        raise ValueError(f"JSON must not nest deeper than {JSON_MAX_DEPTH} levels")
    try:
        encoded = to_json(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not encodable as JSON: {exc}") from None
    if "\\u0000" in encoded or "\x00" in encoded:
        raise ValueError("JSON must not contain NUL (\\u0000) characters")
    return value


def _iso_timestamp(value: Any) -> Any:
    # Before pydantic's parser, which would also read a number, or a string of digits, as seconds.
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and value[:4].isdigit() and value[4:5] == "-":
        return value
    raise ValueError("a timestamp must be an ISO 8601 string with a time zone")


Key = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_no_nul)]
ShortKey = Annotated[str, StringConstraints(min_length=1, max_length=50), AfterValidator(_no_nul)]
MediumKey = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_no_nul)]
Text = Annotated[str, AfterValidator(_no_nul)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Int32 = Annotated[int, Strict(), Field(ge=0, le=MAX_INT32)]
Version = Annotated[int, Strict(), Field(ge=0, le=MAX_VERSION)]
Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_timestamp),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN}),
]
