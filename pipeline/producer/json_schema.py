"""JSON Schemas of the job payloads, for producers that cannot import the pydantic models
(``pipeline schema``).

Each write kind's keyword arguments become a self-contained JSON Schema (draft 2020-12, with its
own ``$defs``), generated from the kind's pydantic model in validation mode: what the worker
accepts, not what it writes. A producer in another language validates a payload against
``schemas()[function]`` before ``enqueue_job(function, **payload)``. ``schemas()["atomic"]`` is
the ``atomic`` job's: its writes are a ``oneOf`` over the kinds, whose schemas it carries in its
``$defs``.

The schema checks shapes, types, required and unknown fields, enums, lengths and ranges, the
worker's item limit on a job's list of items (``maxItems``: the ``job_max_items`` setting when
the schema is generated), a time zone on every timestamp (a ``pattern``), and names the formats
of UUIDs and timestamps (``uuid``, ``date-time``: enable format checking in the validator). A few
rules are code, not schema, and only the worker (or :class:`pipeline.PipelineClient`) checks
them: text and JSON without NUL characters, JSON nested at most
:data:`~pipeline.nesting.JSON_MAX_DEPTH` levels, integers sent as integers (the schema's
``integer`` also admits ``5.0``), a node that is not its own parent, a score update with at least
one score, unique principle names, and the item limit of an ``atomic`` job, which counts the
items of all its writes together.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.kinds import ATOMIC, BY_NAME, KINDS, WriteKind
from pipeline.kinds.atomic import Atomic
from pipeline.settings import get_settings

DRAFT = "https://json-schema.org/draft/2020-12/schema"
LIMIT_SETTING = "PIPELINE_JOB_MAX_ITEMS"


def _limit(max_items: int | None) -> int:
    return get_settings().job_max_items if max_items is None else max_items


def _doc(kind: WriteKind[Any], max_items: int) -> str:
    """What the kind's payload is, and how many items it may carry."""
    doc = " ".join((kind.payload.__doc__ or "").split()).replace("``", "`")
    doc = doc or f"Keyword arguments of `{kind.name}`."
    if kind.items is None:
        return doc
    return (
        f"{doc} `{kind.items}` holds at most {max_items} items: the worker's {LIMIT_SETTING}, "
        "over which it dead-letters the job."
    )


def _enqueue(function: str) -> str:
    return (
        f"Enqueue as arq job `{function}` with these keyword arguments (msgpack); UUIDs and "
        "datetimes travel as strings."
    )


def _body(kind: WriteKind[Any], max_items: int) -> dict[str, Any]:
    """The kind's generated schema with its item limit, without ``$schema`` or description."""
    generated: dict[str, Any] = kind.payload.model_json_schema(mode="validation")
    generated.pop("description", None)
    if kind.items is not None:
        items = generated["properties"][kind.items]
        if items.get("type") != "array":
            raise ValueError(f"{kind.name}: {kind.items} is not an array in the schema")
        items["maxItems"] = max_items
    return generated


def schema(kind: WriteKind[Any], max_items: int | None = None) -> dict[str, Any]:
    """The JSON Schema of one kind's keyword arguments, a document of its own; ``max_items``
    defaults to the ``job_max_items`` setting."""
    limit = _limit(max_items)
    description = f"{_doc(kind, limit)} {_enqueue(kind.name)}"
    return {"$schema": DRAFT, "description": description, **_body(kind, limit)}


def _merge_defs(
    into: dict[str, Any], defs: dict[str, Any], owners: dict[str, str], by: str
) -> None:
    """Add ``by``'s definitions; one name defined two ways would make a ``$ref`` ambiguous."""
    for name, definition in defs.items():
        if name in into and into[name] != definition:
            raise ValueError(
                f"{ATOMIC} schema: $defs {name!r} of {by} differs from that of {owners[name]}"
            )
        into[name] = definition
        owners.setdefault(name, by)


def atomic_schema(max_items: int | None = None) -> dict[str, Any]:
    """The JSON Schema of the ``atomic`` job's keyword arguments, a document of its own: each
    write is ``{"kind": <name>, "args": <that kind's keyword arguments>}``."""
    limit = _limit(max_items)
    generated = Atomic.model_json_schema(mode="validation")
    generated.pop("$defs", None)
    generated.pop("description", None)
    defs: dict[str, Any] = {}
    owners: dict[str, str] = {}
    writes: list[dict[str, Any]] = []
    for kind in KINDS:
        body = _body(kind, limit)
        _merge_defs(defs, body.pop("$defs", {}), owners, kind.name)
        own = {kind.name: {**body, "description": _doc(kind, limit)}}
        _merge_defs(defs, own, owners, kind.name)
        writes.append(
            {
                "type": "object",
                "properties": {
                    "kind": {"const": kind.name},
                    "args": {"$ref": f"#/$defs/{kind.name}"},
                },
                "required": ["kind", "args"],
                "additionalProperties": False,
            }
        )
    generated["properties"]["writes"]["items"] = {"oneOf": writes}
    description = (
        "Keyword arguments of `atomic`: writes of several kinds as one unit; all of them commit "
        "together, or none does. Each write names its kind and carries that kind's keyword "
        f"arguments. The worker's item limit ({LIMIT_SETTING}, {limit}) counts the rows of "
        "every write together (one per item of a write's list; one for a write of a kind "
        "without a list), over which it dead-letters the job; the schema bounds each write's "
        f"list only. {_enqueue(ATOMIC)}"
    )
    return {"$schema": DRAFT, "description": description, **generated, "$defs": defs}


def schemas(max_items: int | None = None) -> dict[str, dict[str, Any]]:
    """Every kind's schema, keyed by its arq function name, in registry order, then
    ``atomic``'s; ``max_items`` defaults to the ``job_max_items`` setting."""
    limit = _limit(max_items)
    return {kind.name: schema(kind, limit) for kind in KINDS} | {ATOMIC: atomic_schema(limit)}


def kind_schema(function: str, max_items: int | None = None) -> dict[str, Any]:
    """The schema of one arq function (a write kind or ``atomic``); :class:`KeyError` if it is
    neither."""
    if function == ATOMIC:
        return atomic_schema(max_items)
    return schema(BY_NAME[function], max_items)


def dumps(document: dict[str, Any]) -> str:
    """A schema document as indented JSON text, ending with a newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
