"""A 200,000-node tree streams in bounded memory; loading it whole does not.

Each read runs in a process of its own, which reports how much its peak resident memory grew
while reading (``VmHWM``, after a warm-up read that loads every module and opens the pool).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

NODES = 200_000
ROOT = Path(__file__).resolve().parents[2]

READER = """
import asyncio, json, sys
from sqlalchemy.ext.asyncio import create_async_engine
from pipeline.reads import TaxonomyReads

def peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

async def main(url, mode):
    engine = create_async_engine(url)
    reads = TaxonomyReads(engine)
    await reads.load_project("warm-up")  # imports, pool, statement caches
    before = peak_kb()
    if mode == "stream":
        count, scored = 0, 0
        async for node in reads.stream_project("big", batch_size=1000):
            count += 1
            scored += len(node.principle_scores)
    else:
        loaded = await reads.load_project("big")
        count = len(loaded.nodes)
        scored = sum(len(n.principle_scores) for n in loaded.nodes)
    print(json.dumps({"count": count, "scored": scored, "growth_kb": peak_kb() - before}))
    await engine.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def _big_tree(engine: AsyncEngine) -> None:
    """200,000 nodes under 100 roots and three principle scores on every tenth node, written
    with the triggers off (setup data, not under test: the audit would triple its cost)."""
    statements = [
        "SET session_replication_role = replica",
        "INSERT INTO projects (project_id, name) VALUES ('big', 'big'), ('warm-up', 'w')",
        "INSERT INTO nodes (project_id, node_id, parent_id, label, content, metadata) "
        "SELECT 'big', 'n' || lpad(g::text, 6, '0'), "
        "CASE WHEN g >= 100 THEN 'n' || lpad((g / 100 - 1)::text, 6, '0') END, "
        "'label ' || g, repeat('x', 100), jsonb_build_object('g', g) "
        f"FROM generate_series(0, {NODES - 1}) g",
        "INSERT INTO rubrics (project_id, rubric_id, version) VALUES ('big', 'q', 1)",
        "INSERT INTO rubric_principles (project_id, rubric_id, rubric_version, name) "
        "SELECT 'big', 'q', 1, 'p' || i FROM generate_series(1, 3) i",
        "INSERT INTO principle_scores "
        "(project_id, node_id, principle_id, rubric_id, rubric_version, score) "
        "SELECT 'big', 'n' || lpad(g::text, 6, '0'), p.principle_id, 'q', 1, g % 7 "
        f"FROM generate_series(0, {NODES - 1}, 10) g CROSS JOIN rubric_principles p",
    ]
    async with engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


def _read(url: str, mode: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", READER, url, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def test_a_200k_node_tree_streams_in_bounded_memory(
    engine: AsyncEngine, database_url: str
) -> None:
    await _big_tree(engine)
    streamed = await asyncio.to_thread(_read, database_url, "stream")
    loaded = await asyncio.to_thread(_read, database_url, "load")
    expected = {"count": NODES, "scored": 3 * NODES // 10}
    assert {k: streamed[k] for k in expected} == expected
    assert {k: loaded[k] for k in expected} == expected
    # One batch of 1,000 nodes is well under 16 MB; the whole tree held is many times that.
    assert streamed["growth_kb"] < 16 * 1024, streamed
    assert loaded["growth_kb"] > 8 * streamed["growth_kb"], (streamed, loaded)
    print(f"peak RSS growth: stream {streamed['growth_kb']} kB, load {loaded['growth_kb']} kB")
