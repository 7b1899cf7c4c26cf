"""``pipeline demo``: worker processes and a producer that simulates a tree search.

The producer grows a taxonomy tree the way a UCB tree search does: it repeatedly expands the most
promising alive nodes, scores the new children (a rubric score, principle scores, a UCB score),
streams UCB updates up the expanded paths, and prunes weak children. Every write is a job enqueued
through the typed client without waiting; the workers coalesce them. At the end the demo reads the
best branch back through the read repository and prints what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.postgres import create_engine, redacted
from pipeline.producer.client import PipelineClient, idle
from pipeline.reads import TaxonomyReads
from pipeline.settings import get_settings

PRINCIPLES = ("accuracy", "coverage", "clarity", "novelty")
RUBRIC = "quality"
EXPANSIONS_PER_STEP = 8
CHILDREN = 4


@dataclass
class SimNode:
    """The producer's own view of a node (a real orchestrator keeps this in memory too)."""

    node_id: str
    parent_id: str | None
    quality: float
    visits: int = 1
    value: float = 0.0
    alive: bool = True
    children: list[str] = field(default_factory=list)


@dataclass
class TreeSearch:
    """A small UCB tree search whose every write goes through the pipeline."""

    client: PipelineClient
    project: str
    rng: random.Random
    nodes: dict[str, SimNode] = field(default_factory=dict)
    jobs: int = 0

    async def write(self, function: str, **payload: Any) -> None:
        await self.client.enqueue(function, project_id=self.project, **payload)
        self.jobs += 1

    async def start(self) -> None:
        await self.client.enqueue("upsert_project", project_id=self.project, name="Demo search")
        principles = [{"name": p, "description": f"How good the {p} is"} for p in PRINCIPLES]
        await self.write("save_rubric", rubric_id=RUBRIC, version=1, principles=principles)
        self.nodes["root"] = SimNode("root", None, quality=0.5)
        await self.write("insert_nodes", nodes=[{"node_id": "root", "label": "All topics"}])
        self.jobs += 1

    def ucb(self, node: SimNode) -> float:
        parent = self.nodes[node.parent_id] if node.parent_id else node
        explore = math.sqrt(2 * math.log(parent.visits + 1) / node.visits)
        return round(node.value / node.visits + explore, 6)

    async def step(self) -> int:
        """Expand the most promising alive nodes; the number of nodes added."""
        frontier = sorted(
            (n for n in self.nodes.values() if n.alive and not n.children),
            key=self.ucb,
            reverse=True,
        )[:EXPANSIONS_PER_STEP]
        added = 0
        for parent in frontier:
            added += await self.expand(parent)
        return added

    async def expand(self, parent: SimNode) -> int:
        kids = []
        for i in range(CHILDREN):
            quality = min(1.0, max(0.0, self.rng.gauss(parent.quality, 0.15)))
            kid = SimNode(f"{parent.node_id}.{i}", parent.node_id, quality, value=quality)
            self.nodes[kid.node_id] = kid
            parent.children.append(kid.node_id)
            kids.append(kid)
        await self.write(
            "insert_nodes",
            nodes=[
                {
                    "node_id": k.node_id,
                    "parent_id": parent.node_id,
                    "label": f"topic {k.node_id}",
                    "metadata": {"depth": k.node_id.count(".")},
                }
                for k in kids
            ],
        )
        await self.write(
            "save_principle_scores",
            scores=[
                {
                    "node_id": k.node_id,
                    "rubric_id": RUBRIC,
                    "rubric_version": 1,
                    "principle": p,
                    "score": round(min(1.0, max(0.0, self.rng.gauss(k.quality, 0.1))), 4),
                }
                for k in kids
                for p in PRINCIPLES
            ],
        )
        await self.backpropagate(parent, kids)
        weak = [k for k in kids if k.quality < parent.quality - 0.1]
        for k in weak:
            k.alive = False
        statuses = [{"node_id": parent.node_id, "status": "expanded", "version": _now_us()}]
        statuses += [{"node_id": k.node_id, "status": "pruned", "version": _now_us()} for k in weak]
        await self.write("update_statuses", statuses=statuses)
        return len(kids)

    async def backpropagate(self, parent: SimNode, kids: list[SimNode]) -> None:
        """Score the new children and stream new UCB scores for the path above them."""
        touched = list(kids)
        node: SimNode | None = parent
        while node is not None:
            node.visits += len(kids)
            node.value += sum(k.quality for k in kids)
            touched.append(node)
            node = self.nodes[node.parent_id] if node.parent_id else None
        version = _now_us()
        await self.write(
            "update_scores",
            scores=[
                {
                    "node_id": n.node_id,
                    "rubric_score": round(n.value / n.visits, 6),
                    "ucb_score": self.ucb(n),
                    "version": version,
                }
                for n in touched
            ],
        )


def _now_us() -> int:
    return time.time_ns() // 1000


def start_workers(count: int, log_path: Path) -> list[subprocess.Popen[bytes]]:
    """Worker processes (``pipeline worker``), logging JSON to a file."""
    env = {**os.environ, "PIPELINE_LOG_FORMAT": "json"}
    log = log_path.open("ab")
    return [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(count)
    ]


async def committed_nodes(engine: AsyncEngine, project: str) -> int:
    """Nodes of the project that are committed."""
    async with engine.connect() as conn:
        query = text("SELECT count(*) FROM nodes WHERE project_id = :p")
        return int((await conn.execute(query, {"p": project})).scalar_one())


async def grow(search: TreeSearch, engine: AsyncEngine, target: int, console: Console) -> None:
    """Run the search until ``target`` nodes exist and every write is committed."""
    columns = (
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        sent = progress.add_task("nodes enqueued", total=target)
        stored = progress.add_task("nodes committed", total=target)
        await search.start()
        while len(search.nodes) < target:
            await search.step()
            progress.update(sent, completed=min(len(search.nodes), target))
            progress.update(stored, completed=await committed_nodes(engine, search.project))
        progress.update(sent, total=len(search.nodes), completed=len(search.nodes))
        progress.update(stored, total=len(search.nodes))
        while True:
            done = await committed_nodes(engine, search.project)
            progress.update(stored, completed=done)
            if done >= len(search.nodes) and await idle(
                search.client.redis, get_settings().queue_name
            ):
                return
            await asyncio.sleep(0.1)


async def report(
    search: TreeSearch, engine: AsyncEngine, log_path: Path, seconds: float, console: Console
) -> int:
    """Read the best branch back and print a summary; the exit code."""
    reads = TaxonomyReads(engine)
    project = search.project
    best = (await reads.top_by_ucb(project, 1))[0]
    branch = await reads.path(project, best.node_id)
    scores = await reads.principle_scores(project, RUBRIC, 1, [n.node_id for n in branch])
    table = Table(title=f"Best branch: {best.node_id}", title_justify="left")
    for column in (
        "depth",
        "status",
        "score",
        "UCB",
        "principles (" + "/".join(p[:3] for p in PRINCIPLES) + ")",
    ):
        table.add_column(column, no_wrap=True)
    for depth, node in enumerate(branch):
        per = scores.get(node.node_id, {})
        table.add_row(
            str(depth),
            node.status,
            f"{node.rubric_score:.3f}",
            f"{node.ucb_score:.3f}",
            " ".join(f"{per[p]:.2f}" if p in per else " -  " for p in PRINCIPLES),
        )
    console.print(table)

    root = await reads.branch_stats(project, "root")
    assert root is not None
    flushes = [
        json.loads(line)
        for line in (await asyncio.to_thread(log_path.read_text)).splitlines()
        if '"batch flushed"' in line
    ]
    async with engine.connect() as conn:
        dead = (await conn.execute(text("SELECT count(*) FROM dead_letters"))).scalar_one()
    # A batch's failed and held jobs commit in a later batch (or never): count each job once.
    jobs = sum(f["jobs"] - f["failed"] - f.get("held", 0) for f in flushes)
    summary = Table(title="Summary", show_header=False)
    summary.add_row(
        "jobs committed",
        f"{jobs:,} in {len(flushes):,} flushes "
        f"({jobs / max(len(flushes), 1):.1f} jobs per transaction)",
    )
    summary.add_row("rows written", f"{sum(sum(f['written'].values()) for f in flushes):,}")
    summary.add_row(
        "tree",
        f"{root.node_count:,} nodes, {root.alive_count:,} alive, "
        f"depth {root.max_depth}, mean score {root.mean_score:.3f}",
    )
    summary.add_row("time", f"{seconds:.1f} s ({jobs / seconds:,.0f} jobs/s)")
    summary.add_row("dead letters", str(dead))
    summary.add_row("worker log", str(log_path))
    console.print(summary)
    return 0 if root.node_count == len(search.nodes) and dead == 0 else 1


async def run(nodes: int = 3000, workers: int = 1, seed: int = 7) -> int:
    """The demo: start workers, grow a tree of ``nodes`` nodes, report, stop the workers."""
    settings = get_settings()
    console = Console()
    console.print(
        f"database {redacted(settings.database_url)} · redis "
        f"{redacted(settings.redis_url)} · {workers} worker(s)"
    )
    log_path = Path(tempfile.mkdtemp(prefix="pipeline-demo-")) / "worker.log"
    procs = start_workers(workers, log_path)
    engine = create_engine(settings)
    client = await PipelineClient.connect(settings=settings)
    search = TreeSearch(client, f"demo-{int(time.time())}", random.Random(seed))
    try:
        started = time.perf_counter()
        await grow(search, engine, nodes, console)
        return await report(search, engine, log_path, time.perf_counter() - started, console)
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        await client.close()
        await engine.dispose()
