"""JSON Schemas of the job payloads, for producers that cannot import the pydantic models
(``pipeline schema``).

Each write kind's keyword arguments become a self-contained JSON Schema (draft 2020-12, with its
own ``$defs``), generated from the kind's pydantic model in validation mode: what the worker
accepts, not what it writes. A producer in another language validates a payload against
``schemas()[function]`` before ``enqueue_job(function, **payload)``.

The schema checks shapes, types, required and unknown fields, enums, lengths and ranges, and
names the formats of UUIDs and timestamps (``uuid``, ``date-time``: enable format checking in the
validator). A few rules are code, not schema, and only the worker (or
:class:`pipeline.PipelineClient`) checks them: text and JSON without NUL characters, JSON nested
at most :data:`~pipeline.nesting.JSON_MAX_DEPTH` levels, integers sent as integers (the schema's
``integer`` also admits ``5.0``), a node that is not its own parent, a score update with at least
one score, unique principle names.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.kinds import BY_NAME, KINDS, WriteKind

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _description(kind: WriteKind[Any]) -> str:
    doc = " ".join((kind.payload.__doc__ or "").split()).replace("``", "`")
    return (
        f"{doc or f'Keyword arguments of `{kind.name}`.'} Enqueue as arq job `{kind.name}` "
        "with these keyword arguments (msgpack); UUIDs and datetimes travel as strings."
    )


def schema(kind: WriteKind[Any]) -> dict[str, Any]:
    """The JSON Schema of one kind's keyword arguments, a document of its own."""
    generated = kind.payload.model_json_schema(mode="validation")
    generated.pop("description", None)
    return {"$schema": DRAFT, "description": _description(kind), **generated}


def schemas() -> dict[str, dict[str, Any]]:
    """Every kind's schema, keyed by its arq function name, in registry order."""
    return {kind.name: schema(kind) for kind in KINDS}


def kind_schema(function: str) -> dict[str, Any]:
    """The schema of one arq function; :class:`KeyError` if it is not a write kind."""
    return schema(BY_NAME[function])


def dumps(document: dict[str, Any]) -> str:
    """A schema document as indented JSON text, ending with a newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
