"""A worker's ``/ready`` answers from its first second, under both commands: while Redis is not
up yet at start-up it answers 503 naming Redis (instead of refusing the connection, which is
what a probe saw when the endpoint opened only after Redis answered), then 200 once Redis is up
and the worker has started.

Redis here is a private ``redis-server`` on a free port, started only after the worker process.
"""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import WorkerProcess, wait_for
from tests.e2e.private_postgres import free_port
from tests.integration.test_redis_restart import PrivateRedis

pytestmark = pytest.mark.e2e
#: How long a worker process may take to import and open its endpoint on a loaded machine.
OPENED_WITHIN_S = 5.0


def ready(port: int) -> tuple[int, str] | None:
    """``GET /ready``: its status and body, or None while nothing listens on ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as refused:
        return int(refused.code), refused.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None


@pytest.fixture
def redis_later(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis, not started: the test starts it when it wants."""
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.close()


def test_ready_answers_503_naming_redis_until_redis_is_up(
    start_worker: Callable[..., WorkerProcess], redis_later: PrivateRedis
) -> None:
    port = free_port()
    worker = start_worker(
        PIPELINE_REDIS_URL=redis_later.url,
        PIPELINE_METRICS_PORT=str(port),
        PIPELINE_METRICS_HOST="127.0.0.1",
    )
    answers: list[tuple[int, str]] = []

    def answered() -> bool:
        answer = ready(port)
        if answer is not None:
            answers.append(answer)
        return answer is not None

    wait_for(answered, OPENED_WITHIN_S, f"/ready on port {port}: {worker.output()}")
    status, body = answers[0]
    assert status == 503, body
    assert f"redis {redis_later.url}: unreachable" in body
    assert "worker: starting" in body
    assert "worker started" not in worker.output()

    time.sleep(1.5)  # Redis stays down: the worker lives on, and says why it is not ready
    still = ready(port)
    assert still is not None and still[0] == 503 and "redis" in still[1], still
    assert worker.proc.poll() is None

    redis_later.start()
    wait_for(lambda: (ready(port) or (0, ""))[0] == 200, 30, f"200 from /ready: {answers}")
    status, body = ready(port) or (0, "")
    assert status == 200 and f"redis {redis_later.url}: ok" in body, body
    assert "starting" not in body
    worker.wait_started()
    assert worker.stop(signal.SIGTERM) == 0
