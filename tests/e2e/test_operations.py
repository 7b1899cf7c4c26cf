"""An operator's controls against real worker processes: ``pipeline pause`` stops every worker
taking jobs within a poll (status, metrics and readiness say so), ``resume`` restarts them, in
both modes; ``pipeline exporter`` reports the queue with no worker running; and the page at
``/`` renders in a real browser."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.ops import dead_letters
from pipeline.settings import Settings
from tests.e2e.conftest import PIPELINE, WorkerProcess, run_pipeline, wait_for
from tests.integration.helpers import scalar

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "operations-page.png"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def gauge(port: int, name: str, **labels: str) -> float | None:
    _, body = get(f"http://127.0.0.1:{port}/metrics")
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "PIPELINE_DATABASE_URL": str(settings.database_url),
        "PIPELINE_REDIS_URL": str(settings.redis_url),
        "PIPELINE_QUEUE_NAME": settings.queue_name,
        "PIPELINE_LOG_FORMAT": "json",
    }


async def insert(producer: ArqRedis, n: int, prefix: str) -> None:
    for i in range(n):
        await producer.enqueue_job(
            "insert_nodes",
            project_id="p",
            nodes=[{"node_id": f"{prefix}{i}", "parent_id": "root", "label": "x"}],
        )


@pytest.fixture(params=["pipeline", "arq"])
def mode(request: pytest.FixtureRequest) -> str:
    """``pipeline worker`` (claims in batches, sees a pause in its claim script) or stock arq
    (``arq pipeline.WorkerSettings`` with ``PIPELINE_BATCH_CLAIMS=false``, which follows a pause
    when it publishes its status)."""
    return str(request.param)


async def test_pause_stops_every_worker_and_resume_restarts_them(
    mode: str,
    start_worker: Callable[..., WorkerProcess],
    producer: ArqRedis,
    engine: AsyncEngine,
    env: dict[str, str],
    settings: Settings,
) -> None:
    port = free_port()
    batch_claims = "true" if mode == "pipeline" else "false"
    worker = start_worker(PIPELINE_BATCH_CLAIMS=batch_claims, PIPELINE_METRICS_PORT=str(port))
    worker.wait_started()
    await producer.enqueue_job("upsert_project", project_id="p", name="p")
    await producer.enqueue_job(
        "insert_nodes", project_id="p", nodes=[{"node_id": "root", "label": "root"}]
    )
    await insert(producer, 3, "before")
    nodes = "SELECT count(*) FROM nodes"
    await asyncio.to_thread(
        wait_for, lambda: get(f"http://127.0.0.1:{port}/ready")[0] == 200, 20, "ready"
    )
    deadline = time.monotonic() + 20
    while await scalar(engine, nodes) < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    paused = run_pipeline(env, "pause", "--reason", "maintenance")
    assert paused.returncode == 0, paused.stderr
    await asyncio.sleep(1.5)  # stock arq follows within its status interval (a second)
    await insert(producer, 20, "during")
    await asyncio.sleep(3)
    assert await scalar(engine, nodes) == 4, "a paused worker took jobs"
    assert await producer.zcard(settings.queue_name) == 20
    code, body = get(f"http://127.0.0.1:{port}/ready")
    assert code == 503 and "paused" in body and "maintenance" in body
    assert gauge(port, "pipeline_paused") == 1
    assert gauge(port, "pipeline_queue_jobs", function="insert_nodes", state="due") == 20
    status = run_pipeline(env, "status", "--json")
    assert '"reason": "maintenance"' in status.stdout

    resumed = run_pipeline(env, "resume")
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    deadline = time.monotonic() + 30
    while await scalar(engine, nodes) < 24:
        assert time.monotonic() < deadline, "the workers did not resume"
        await asyncio.sleep(0.05)
    assert gauge(port, "pipeline_paused") == 0
    assert get(f"http://127.0.0.1:{port}/ready")[0] == 200
    assert worker.stop() == 0


@pytest.fixture
def exporter(env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    """A ``pipeline exporter`` process; its port."""
    port = free_port()
    log = (tmp_path / "exporter.log").open("wb")
    proc = subprocess.Popen(
        [PIPELINE, "exporter"],
        env={**env, "PIPELINE_METRICS_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _answers(port), 30, "the exporter to listen")
        yield port
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        log.close()


def _answers(port: int) -> bool:
    try:
        return get(f"http://127.0.0.1:{port}/ready")[0] in (200, 503)
    except OSError:
        return False


async def test_the_exporter_reports_the_queue_with_no_worker_running(
    exporter: int, producer: ArqRedis, engine: AsyncEngine
) -> None:
    await insert(producer, 4, "n")
    await producer.enqueue_job("upsert_project", project_id="p", name="p", _defer_by=600)
    await dead_letters.record(
        engine, job_id="j", function="insert_nodes", payload={}, error=ValueError("x"), tries=1
    )
    await asyncio.sleep(1.2)  # so the oldest due job's age shows
    assert gauge(exporter, "pipeline_queue_depth") == 5
    assert gauge(exporter, "pipeline_queue_jobs", function="insert_nodes", state="due") == 4
    assert gauge(exporter, "pipeline_queue_jobs", function="upsert_project", state="deferred") == 1
    age = gauge(exporter, "pipeline_queue_oldest_due_age_seconds")
    assert age is not None and age >= 1
    assert gauge(exporter, "pipeline_workers_seen") == 0
    assert (
        gauge(
            exporter,
            "pipeline_dead_letters_unresolved",
            function="insert_nodes",
            reason="ValueError",
        )
        == 1
    )
    assert gauge(exporter, "pipeline_source_up", source="postgres") == 1
    # Only the queue's side: no worker counters at zero that would look like a healthy worker.
    assert gauge(exporter, "pipeline_last_flush_timestamp_seconds") is None
    assert get(f"http://127.0.0.1:{exporter}/ready")[0] == 200


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is missing: apt-get install chromium (./run test installs it)"
    return found


async def test_the_page_renders_in_a_real_browser(
    producer: ArqRedis, engine: AsyncEngine, env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    worker = WorkerProcess(
        {**env, "PIPELINE_METRICS_PORT": str(port)}, tmp_path / "worker.log", "pipeline"
    )
    try:
        worker.wait_started()
        await producer.enqueue_job("upsert_project", project_id="p", name="p")
        await producer.enqueue_job(
            "insert_nodes", project_id="p", nodes=[{"node_id": "root", "label": "root"}]
        )
        await insert(producer, 3, "n")
        deadline = time.monotonic() + 20
        while await scalar(engine, "SELECT count(*) FROM nodes") < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # the worker publishes its flushes every second
        await dead_letters.record(
            engine,
            job_id="j",
            function="insert_nodes",
            payload={},
            error=ValueError("<script>alert(1)</script>"),
            tries=1,
        )
        assert run_pipeline(env, "pause", "--reason", "deploy <b>now</b>").returncode == 0
        await insert(producer, 7, "held")  # they wait while paused: the page shows them due
        url = f"http://127.0.0.1:{port}/"
        browser = [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
        ]
        dom = (await asyncio.to_thread(run, [*browser, "--dump-dom", url])).stdout
        for expected in ("Queue", "Workers", "Recent flushes", "Dead letters by reason", "PAUSED"):
            assert expected in dom
        assert worker.output().count("batch flushed") >= 1
        assert "running" in dom and "no flush yet" not in dom
        assert "insert_nodes" in dom and "ValueError" in dom
        assert '<td class="n">7</td>' in dom
        assert "deploy &lt;b&gt;now&lt;/b&gt;" in dom  # escaped, not markup
        assert "<b>now</b>" not in dom
        shot = tmp_path / "page.png"
        await asyncio.to_thread(
            run, [*browser, f"--screenshot={shot}", "--window-size=1100,800", url]
        )
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        if os.environ.get("PIPELINE_UPDATE_SCREENSHOT"):
            SCREENSHOT.write_bytes(data)
        assert worker.stop() == 0
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(timeout=10)
