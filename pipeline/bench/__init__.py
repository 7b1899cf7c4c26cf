"""``pipeline bench``: every scenario of the score-update workload in one run, side by side.

The machine is shared and noisy, so each figure that matters is a ratio against a baseline run in
the same command minutes apart at most. Results go to a table, a JSON file and (with the
``bench`` extra, matplotlib) a PNG chart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pipeline.bench.scenarios import Result, Workload, ceiling, coalesced, drained_by, latency
from pipeline.settings import Settings, get_settings

Scenario = tuple[str, Callable[[Settings, Path], Awaitable[Result]]]


def scenarios(quick: bool) -> list[Scenario]:
    """The scenarios, sized to take 10-60 s each on a 2-core machine (a second or two with
    ``quick``): the references (1, 2) drain 20,000 jobs, the pipeline's single writes (under both
    commands) 100,000 jobs, its batched writes and the ceilings 1,000,000 rows; always N updates
    over K = N / 10 nodes (K = N where the name says so)."""
    n = 400 if quick else 20_000  # the references drain slowest (docs/benchmarks.md)
    jobs = 400 if quick else 100_000
    rows = 4_000 if quick else 1_000_000
    slow = Workload(n, max(n // 10, 1))
    single = Workload(jobs, jobs // 10)
    single_wide = Workload(jobs, jobs)
    batched = Workload(rows, rows // 10, per_job=100)
    ceilings = Workload(rows, rows // 10)
    coalescing = Workload(rows, rows // 10)
    return [
        (
            "1 naive baseline",
            lambda s, log: drained_by("1 naive baseline", "naive", slow, s, log),
        ),
        (
            "2 arq floor (no-op)",
            lambda s, log: drained_by("2 arq floor (no-op)", "noop", slow, s, log),
        ),
        (
            "3 pipeline, 1 write/job",
            lambda s, log: drained_by("3 pipeline, 1 write/job", "pipeline", single, s, log),
        ),
        (
            "3 pipeline, 1 write/job, arq mode",
            lambda s, log: drained_by(
                "3 pipeline, 1 write/job, arq mode", "pipeline-arq", single, s, log
            ),
        ),
        (
            "3 pipeline, 1 write/job, K=N",
            lambda s, log: drained_by(
                "3 pipeline, 1 write/job, K=N", "pipeline", single_wide, s, log
            ),
        ),
        (
            "4 pipeline via the coalescing client",
            lambda s, log: coalesced("4 pipeline via the coalescing client", coalescing, s, log),
        ),
        (
            "5 pipeline, 100 writes/job",
            lambda s, log: drained_by("5 pipeline, 100 writes/job", "pipeline", batched, s, log),
        ),
        (
            "5 pipeline, 100 writes/job, arq mode",
            lambda s, log: drained_by(
                "5 pipeline, 100 writes/job, arq mode", "pipeline-arq", batched, s, log
            ),
        ),
        (
            "6 ceiling: unnest, no queue",
            lambda s, log: ceiling("6 ceiling: unnest, no queue", ceilings, s, log, copy=False),
        ),
        (
            "6 ceiling: COPY, no queue",
            lambda s, log: ceiling("6 ceiling: COPY, no queue", ceilings, s, log, copy=True),
        ),
        (
            "7 latency at 500 jobs/s",
            lambda s, log: latency(
                "7 latency at 500 jobs/s",
                s,
                log,
                rate=100 if quick else 500,
                seconds=2 if quick else 10,
            ),
        ),
        (
            "8 two workers, 1 write/job",
            lambda s, log: drained_by(
                "8 two workers, 1 write/job", "pipeline", single, s, log, workers=2
            ),
        ),
        (
            "8 two workers, 100 writes/job",
            lambda s, log: drained_by(
                "8 two workers, 100 writes/job", "pipeline", batched, s, log, workers=2
            ),
        ),
    ]


def _targets(by_name: dict[str, Result]) -> list[tuple[str, str, bool]]:
    naive = by_name["1 naive baseline"].rows_per_s
    floor = by_name["2 arq floor (no-op)"].jobs_per_s
    single = by_name["3 pipeline, 1 write/job"].jobs_per_s
    batched = by_name["5 pipeline, 100 writes/job"].rows_per_s
    single_arq = by_name["3 pipeline, 1 write/job, arq mode"].jobs_per_s
    batched_arq = by_name["5 pipeline, 100 writes/job, arq mode"].rows_per_s
    unnest = by_name["6 ceiling: unnest, no queue"].rows_per_s
    p99 = by_name["7 latency at 500 jobs/s"].extra["p99_ms"]
    client = by_name["4 pipeline via the coalescing client"].rows_per_s
    longest = max(  # single writes: a steady state (100-write runs fill two batches first)
        (
            r
            for r in by_name.values()
            if r.rss_first_quarter_mb and r.rss_last_quarter_mb and r.name.startswith("3 ")
        ),
        key=lambda r: r.seconds,
    )
    first, last = longest.rss_first_quarter_mb or 0.0, longest.rss_last_quarter_mb or 0.0
    return [
        (
            f"RSS flat (+-10%) over the longest run ({longest.name})",
            f"{first:.0f} -> {last:.0f} MB",
            abs(last - first) <= 0.1 * first,
        ),
        ("4 ≥ 50,000 rows/s", f"{client:,.0f} rows/s", client >= 50_000),
        ("4 ≥ 25 x 1 (rows/s)", f"{client / naive:.1f} x", client >= 25 * naive),
        ("3 ≥ 0.9 x 2 (jobs/s)", f"{single / floor:.2f} x", single >= 0.9 * floor),
        ("3 arq mode ≥ 0.9 x 2 (jobs/s)", f"{single_arq / floor:.2f} x", single_arq >= 0.9 * floor),
        (
            "5 arq mode ≥ 0.8 x 5 (rows/s)",
            f"{batched_arq / batched:.2f} x",
            batched_arq >= 0.8 * batched,
        ),
        ("3 ≥ 4 x 2 (jobs/s, the stretch goal)", f"{single / floor:.2f} x", single >= 4 * floor),
        (
            "3 ≥ 3 x 1 (rows/s)",
            f"{by_name['3 pipeline, 1 write/job'].rows_per_s / naive:.1f} x",
            single >= 3 * naive,
        ),
        ("5 ≥ 0.5 x 6 unnest (rows/s)", f"{batched / unnest:.2f} x", batched >= 0.5 * unnest),
        ("7 p99 ≤ 20 ms", f"{p99} ms", p99 <= 20),
    ]


def _table(results: list[Result]) -> Table:
    naive = results[0].rows_per_s
    table = Table(
        "scenario",
        "rows/s",
        "jobs/s",
        "x naive",
        "worker CPU %",
        "peak RSS MB",
        title="pipeline bench",
    )
    for r in results:
        if "p99_ms" in r.extra:
            table.add_row(r.name, "", f"{r.jobs_per_s:,.0f}", "", "", "", end_section=False)
            table.add_row(
                "",
                f"p50 {r.extra['p50_ms']} ms",
                f"p95 {r.extra['p95_ms']} ms",
                f"p99 {r.extra['p99_ms']} ms",
                "",
                "",
            )
            continue
        table.add_row(
            r.name,
            f"{r.rows_per_s:,.0f}",
            f"{r.jobs_per_s:,.0f}",
            f"{r.rows_per_s / naive:.1f}",
            f"{r.cpu_pct:.0f}" if r.cpu_pct is not None else "-",
            f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-",
        )
    return table


def _chart(results: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    drained = [r for r in results if "p99_ms" not in r.extra]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.barh([r.name for r in drained], [r.rows_per_s for r in drained])
    ax.set_xscale("log")
    ax.set_xlabel("rows/s (log scale)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


async def run(quick: bool, only: list[str] | None, console: Console) -> tuple[list[Result], Path]:
    """Run every scenario (or those whose name contains ``only``), with a progress bar."""
    settings = get_settings()
    chosen = [s for s in scenarios(quick) if not only or any(o in s[0] for o in only)]
    log = Path(tempfile.mkdtemp(prefix="pipeline-bench-")) / "workers.log"
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(chosen))
        for name, scenario in chosen:
            progress.update(task, description=name)
            results.append(await scenario(settings, log))
            progress.advance(task)
    return results, log


def report(results: list[Result], quick: bool, out: Path, log: Path, console: Console) -> None:
    """Print the table and the targets; write the JSON file and the chart."""
    console.print(_table(results))
    by_name = {r.name: r for r in results}
    targets = _targets(by_name) if len(results) == len(scenarios(quick)) else []
    for label, value, met in targets:
        console.print(f"{'met    ' if met else 'not met'}  {label}: {value}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) | {"rows_per_s": r.rows_per_s, "jobs_per_s": r.jobs_per_s} for r in results]
    document = {
        "when": stamp,
        "quick": quick,
        "machine": platform.platform(),
        "cpus": _cpus(),
        "results": rows,
        "targets": [{"target": t, "value": v, "met": m} for t, v, m in targets],
    }
    (out / f"bench-{stamp}.json").write_text(json.dumps(document, indent=2))
    charted = _chart(results, out / f"bench-{stamp}.png")
    console.print(
        f"results: {out / f'bench-{stamp}.json'}"
        + (f", chart: {out / f'bench-{stamp}.png'}" if charted else "")
        + f"; worker logs: {log}"
    )


def _cpus() -> int:
    return os.cpu_count() or 0


def main(quick: bool, out: Path, only: list[str] | None) -> int:
    """Entry point of ``pipeline bench``."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    results, log = asyncio.run(run(quick, only, console))
    report(results, quick, out, log, console)
    return 0
