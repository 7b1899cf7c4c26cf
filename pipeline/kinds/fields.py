"""Field types shared by the payload models: bounded keys, text PostgreSQL accepts, finite
numbers, JSON objects that encode to valid ``jsonb``."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints

STRICT = ConfigDict(extra="forbid", str_strip_whitespace=False, allow_inf_nan=False)
MAX_VERSION = 2**63 - 1


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text must not contain NUL (\\x00) characters")
    return value


def to_json(value: dict[str, Any]) -> str:
    """Compact JSON text for a ``jsonb`` column."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    try:
        encoded = to_json(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not encodable as JSON: {exc}") from None
    if "\\u0000" in encoded or "\x00" in encoded:
        raise ValueError("JSON must not contain NUL (\\u0000) characters")
    return value


Key = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_no_nul)]
ShortKey = Annotated[str, StringConstraints(min_length=1, max_length=50), AfterValidator(_no_nul)]
MediumKey = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_no_nul)]
Text = Annotated[str, AfterValidator(_no_nul)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
Version = Annotated[int, Field(ge=0, le=MAX_VERSION)]
