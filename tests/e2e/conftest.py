"""Fixtures that start real worker processes (``arq pipeline.WorkerSettings``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis

from pipeline import create_pool
from pipeline.settings import Settings

ARQ = str(Path(sys.executable).with_name("arq"))
PIPELINE = str(Path(sys.executable).with_name("pipeline"))
COMMANDS = {
    # the deployment command, with arq's option that makes its first lines the pipeline's too
    "arq": [ARQ, "pipeline.WorkerSettings", "--custom-log-dict", "pipeline.logs.ARQ_LOGGING"],
    "pipeline": [PIPELINE, "worker"],
}


def run_pipeline(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``pipeline ARGS`` to its end (two minutes at most); its exit code and output."""
    return subprocess.run(
        [PIPELINE, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    """Settings shared by the test's producer and its worker processes."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_name=f"pipeline:e2e:{uuid.uuid4().hex[:8]}",
        reference_retry_delay_s=0.05,
        transient_retry_delay_s=0.1,
        retry_max_delay_s=1.0,
        retry_wait_s=60.0,
        database_probe_interval_s=0.2,
        job_timeout_s=3,  # a killed worker's jobs run again after 3 + 10 s
        max_tries=8,  # only runs cut short spend tries: a job may be in flight at every kill
    )


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[ArqRedis]:
    """A producer's pool, made by ``pipeline.create_pool``."""
    pool = await create_pool(settings=settings)
    yield pool
    await pool.aclose()


class WorkerProcess:
    """One worker process (``arq pipeline.WorkerSettings`` or ``pipeline worker``), its output
    kept in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, command: str = "arq") -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            COMMANDS[command], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit code.

        SIGTERM waits until the worker has started: before it installs its handlers, Python's
        default one ends the process (nothing is lost, there is nothing in flight yet, but it is
        not the graceful stop a test that sends SIGTERM means to check)."""
        if sig == signal.SIGTERM:
            self.wait_started(timeout)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text()

    def wait_started(self, timeout: float = 30) -> None:
        """Return once the worker has logged its start (or has exited)."""
        deadline = time.monotonic() + timeout
        while "worker started" not in self.output() and self.proc.poll() is None:
            assert time.monotonic() < deadline, f"no start within {timeout} s: {self.output()}"
            time.sleep(0.05)


@pytest.fixture(params=["arq", "pipeline"])
def mode(request: pytest.FixtureRequest) -> str:
    """Which command runs the workers: ``arq pipeline.WorkerSettings`` or ``pipeline worker``
    (both claim in batches; ``PIPELINE_BATCH_CLAIMS=false`` makes the first stock arq); every
    test that starts workers runs in both."""
    return str(request.param)


@pytest.fixture
def start_worker(
    settings: Settings, tmp_path: Path, mode: str
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes configured like ``settings`` (in the test's ``mode`` unless told
    otherwise); all are killed after the test."""
    env = {
        **os.environ,
        "PIPELINE_DATABASE_URL": str(settings.database_url),
        "PIPELINE_REDIS_URL": str(settings.redis_url),
        "PIPELINE_QUEUE_NAME": settings.queue_name,
        "PIPELINE_REFERENCE_RETRY_DELAY_S": str(settings.reference_retry_delay_s),
        "PIPELINE_TRANSIENT_RETRY_DELAY_S": str(settings.transient_retry_delay_s),
        "PIPELINE_RETRY_MAX_DELAY_S": str(settings.retry_max_delay_s),
        "PIPELINE_RETRY_WAIT_S": str(settings.retry_wait_s),
        "PIPELINE_DATABASE_PROBE_INTERVAL_S": str(settings.database_probe_interval_s),
        "PIPELINE_JOB_TIMEOUT_S": str(settings.job_timeout_s),
        "PIPELINE_MAX_TRIES": str(settings.max_tries),
        "PIPELINE_LOG_FORMAT": "json",
    }
    started: list[WorkerProcess] = []

    def start(command: str | None = None, **extra_env: str) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess({**env, **extra_env}, log_path, command or mode)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
