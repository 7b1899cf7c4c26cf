"""How deep input may nest, and the check that finds out without recursion.

Everything that walks nested data in C (``repr``, which arq runs on every job's arguments before
the job runs; ``json.dumps``; msgpack) recurses once per level and raises ``RecursionError`` near
Python's recursion limit (1,000 frames, the worker's own included). So input is measured first,
by a loop, and refused when it nests deeper than these limits:

- :data:`JOB_MAX_DEPTH` levels for a whole job (arq's job map is level 1): what the worker's
  deserializer lets through, and what a dead letter's payload may have to be stored as JSON;
- :data:`JSON_MAX_DEPTH` levels for a JSON field of a payload (``metadata``, ``payload``, …; the
  object itself is level 1): what the payload models accept, well inside what PostgreSQL's
  ``jsonb`` and the read side (``json.loads``) take.
"""

from __future__ import annotations

from typing import Any

JOB_MAX_DEPTH = 512
JSON_MAX_DEPTH = 100

_CONTAINERS = (dict, list, tuple)
_DECODED = frozenset((dict, list))


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests maps and sequences more than ``limit`` levels deep (a scalar is
    level 0, a flat list level 1), found level by level without recursion."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, _CONTAINERS)
        ]
    return False


def decoded_deeper_than(value: Any, limit: int) -> bool:
    """:func:`deeper_than` for what msgpack decodes (plain dicts and lists only), cheaper on the
    per-job path: a set lookup of each value's exact type instead of ``isinstance``."""
    level = [value] if type(value) in _DECODED else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for container in level
            for child in (container.values() if type(container) is dict else container)
            if type(child) in _DECODED
        ]
    return False
