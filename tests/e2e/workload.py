"""A known workload for fault tests, and the check of the database against its expected state.

Several thousand jobs across kinds, with overlapping keys and versions: node inserts in shuffled
order (children may come before their parents), score and status updates with explicit versions
on shared nodes, and event and transcript appends whose identities repeat across jobs.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass
class Figures:
    """What a fault test reports."""

    jobs: int
    lost: int
    duplicated: int
    wrong_version: int
    dead_lettered: int

    def line(self, faults: str) -> str:
        return (
            f"jobs={self.jobs} faults={faults} lost={self.lost} duplicated={self.duplicated} "
            f"wrong_version={self.wrong_version} dead_lettered={self.dead_lettered}"
        )


@dataclass
class Workload:
    """Jobs to enqueue and the state they must leave behind."""

    seed: int = 1
    children: int = 200
    score_jobs: int = 1200
    status_jobs: int = 400
    event_jobs: int = 400
    transcript_jobs: int = 300
    jobs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    scores: dict[str, tuple[int, float]] = field(default_factory=dict)
    statuses: dict[str, tuple[int, str]] = field(default_factory=dict)
    events: set[str] = field(default_factory=set)
    transcripts: set[tuple[str, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self._nodes(rng)
        versions = iter(rng.sample(range(1, 10**9), 10 * (self.score_jobs + self.status_jobs)))
        names = sorted(self.nodes)
        for _ in range(self.score_jobs):
            items = []
            for n in rng.sample(names, rng.randint(1, 5)):
                v = next(versions)
                items.append({"node_id": n, "ucb_score": v / 1e6, "version": v})
                if v > self.scores.get(n, (0, 0.0))[0]:
                    self.scores[n] = (v, v / 1e6)
            self.jobs.append(("update_scores", {"project_id": "p", "scores": items}))
        for _ in range(self.status_jobs):
            items = []
            for n in rng.sample(names, rng.randint(1, 3)):
                v, status = next(versions), rng.choice(["expanded", "pruned", "terminal"])
                items.append({"node_id": n, "status": status, "version": v})
                if v > self.statuses.get(n, (0, ""))[0]:
                    self.statuses[n] = (v, status)
            self.jobs.append(("update_statuses", {"project_id": "p", "statuses": items}))
        self._appends(rng)
        rng.shuffle(self.jobs)
        self.jobs.insert(0, ("upsert_project", {"project_id": "p", "name": "faults"}))

    def _nodes(self, rng: random.Random) -> None:
        tree = [("root", None)] + [(f"c{i}", "root") for i in range(self.children)]
        tree += [(f"g{i}", f"c{rng.randrange(self.children)}") for i in range(self.children)]
        self.nodes = {n for n, _ in tree}
        rng.shuffle(tree)
        for start in range(0, len(tree), 10):
            chunk = tree[start : start + 10]
            nodes = [{"node_id": n, "parent_id": p, "label": n} for n, p in chunk]
            self.jobs.append(("insert_nodes", {"project_id": "p", "nodes": nodes}))

    def _appends(self, rng: random.Random) -> None:
        pool = [str(uuid.UUID(int=i + 1)) for i in range(self.event_jobs * 2)]
        for _ in range(self.event_jobs):
            ids = rng.sample(pool, 3)  # ids repeat across jobs: appends must not duplicate
            self.events.update(ids)
            events = [
                {"event_id": i, "task_id": "t", "event_type": "tick", "occurred_at": T0.isoformat()}
                for i in ids
            ]
            self.jobs.append(("record_events", {"events": events}))
        for _ in range(self.transcript_jobs):
            keys = rng.sample(range(self.transcript_jobs), 2)
            self.transcripts.update(("t", k) for k in keys)
            entries = [
                {
                    "task_id": "t",
                    "phase": "p",
                    "iteration": 0,
                    "seq": k,
                    "role": "chunk",
                    "content": f"entry {k}",
                    "timestamp": T0.isoformat(),
                }
                for k in keys
            ]
            self.jobs.append(("append_transcripts", {"transcripts": entries}))

    async def enqueue(
        self, redis: ArqRedis, jobs: list[tuple[str, dict[str, Any]]] | None = None
    ) -> None:
        """Enqueue every job (or just ``jobs``) with plain ``enqueue_job``."""
        for function, kwargs in self.jobs if jobs is None else jobs:
            await redis.enqueue_job(function, **kwargs)

    async def check(self, engine: AsyncEngine) -> Figures:
        """Compare the database with the expected state."""
        async with engine.connect() as conn:

            async def all_rows(sql: str) -> list[Any]:
                return list((await conn.execute(text(sql))).all())

            nodes = await all_rows(
                "SELECT node_id, ucb_score, ucb_score_version, status, status_version FROM nodes"
            )
            events = await all_rows("SELECT event_id::text, count(*) FROM events GROUP BY 1")
            entries = await all_rows("SELECT task_id, seq FROM transcripts")
            dead = (await conn.execute(text("SELECT count(*) FROM dead_letters"))).scalar_one()
        found = {n[0] for n in nodes}
        wrong = sum(
            (n[2], n[1]) != self.scores.get(n[0], (0, None))
            or (n[4], n[3]) != self.statuses.get(n[0], (0, "alive"))
            for n in nodes
        )
        lost = len(self.nodes - found) + len(self.events - {e[0] for e in events})
        lost += len(self.transcripts - {(t[0], t[1]) for t in entries})
        duplicated = sum(e[1] - 1 for e in events) + len(entries) - len(set(entries))
        return Figures(len(self.jobs), lost, duplicated, wrong, int(dead))
