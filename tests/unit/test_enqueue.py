"""``RetryingRedis.enqueue_job`` against fakeredis, with faults injected into arq's MULTI/EXEC:
a lost reply, a dropped connection, a loading or read-only server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_result
from fakeredis import FakeAsyncRedis
from redis.asyncio.client import Pipeline
from redis.exceptions import (
    BusyLoadingError,
    ExecAbortError,
    ReadOnlyError,
    ResponseError,
    WatchError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from pipeline.producer.enqueue import RetryingRedis
from pipeline.serialization import deserialize, serialize

QUEUE = "pipeline:unit"
Run = Callable[[], Awaitable[Any]]
Fault = Callable[[Run], Awaitable[Any]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsyncRedis]:
    """An in-memory Redis."""
    redis = FakeAsyncRedis()
    yield redis
    await redis.aclose()


@pytest.fixture
def pool(fake: FakeAsyncRedis) -> RetryingRedis:
    """A retrying producer pool on the in-memory Redis, retrying for up to 5 s."""
    return RetryingRedis(
        connection_pool=fake.connection_pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE,
        enqueue_retry_s=5,
    )


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> list[Fault]:
    """Faults for the next MULTI/EXECs, in order; each is given the real EXEC to run (or not)."""
    pending: list[Fault] = []
    real = Pipeline.execute

    async def execute(self: Pipeline, raise_on_error: bool = True) -> Any:
        if pending and self.explicit_transaction:
            return await pending.pop(0)(lambda: real(self, raise_on_error))
        return await real(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", execute)
    return pending


async def reply_lost(run: Run) -> None:
    """EXEC is applied, then the connection drops before its reply arrives."""
    await run()
    raise WatchError("A ConnectionError occurred on while watching one or more keys")


def fails_with(error: Exception) -> Fault:
    """EXEC never reaches the server: it fails with ``error``."""

    async def fault(run: Run) -> None:
        raise error

    return fault


async def queued(fake: FakeAsyncRedis) -> list[str]:
    return [member.decode() for member in await fake.zrange(QUEUE, 0, -1)]


async def test_a_lost_reply_returns_the_job_it_wrote_not_none(
    pool: RetryingRedis, fake: FakeAsyncRedis, faults: list[Fault]
) -> None:
    faults.append(reply_lost)
    job = await pool.enqueue_job("upsert_project", project_id="p", name="n")
    assert job is not None
    assert await queued(fake) == [job.job_id]
    assert pool.enqueue_retries == {"WatchError": 1}
    data = msgpack.unpackb(await fake.get(job_key_prefix + job.job_id))
    assert (data["f"], data["k"]) == ("upsert_project", {"project_id": "p", "name": "n"})


async def test_arq_alone_reports_a_lost_reply_as_a_duplicate(
    fake: FakeAsyncRedis, faults: list[Fault]
) -> None:
    # What the retrying pool replaces: the job is written, and the producer is told None.
    plain = ArqRedis(connection_pool=fake.connection_pool, job_serializer=serialize)
    faults.append(reply_lost)
    assert await plain.enqueue_job("upsert_project", project_id="p", name="n") is None
    assert len(await fake.zrange("arq:queue", 0, -1)) == 1


async def test_failed_attempts_retry_with_the_same_id_and_write_once(
    pool: RetryingRedis, fake: FakeAsyncRedis, faults: list[Fault]
) -> None:
    faults.extend(
        [
            fails_with(RedisConnectionError("Connection refused")),
            fails_with(BusyLoadingError("Redis is loading the dataset in memory")),
            fails_with(ReadOnlyError("You can't write against a read only replica.")),
            fails_with(ExecAbortError("Transaction discarded because of: READONLY")),
            reply_lost,
        ]
    )
    job = await pool.enqueue_job("upsert_project", _job_id="mine", project_id="p", name="n")
    assert job is not None and job.job_id == "mine"
    assert await queued(fake) == ["mine"]
    assert pool.enqueue_retries == {
        "ConnectionError": 1,
        "BusyLoadingError": 1,
        "ReadOnlyError": 1,
        "ExecAbortError": 1,
        "WatchError": 1,
    }


async def test_a_chosen_id_taken_before_the_first_attempt_returns_none(
    pool: RetryingRedis, fake: FakeAsyncRedis
) -> None:
    assert await pool.enqueue_job("upsert_project", _job_id="taken", project_id="p", name="a")
    first = await fake.get(job_key_prefix + "taken")
    assert (
        await pool.enqueue_job("upsert_project", _job_id="taken", project_id="p", name="b") is None
    )
    assert await fake.get(job_key_prefix + "taken") == first
    assert pool.enqueue_retries == {}


async def test_a_chosen_id_taken_by_another_producer_between_attempts_returns_none(
    pool: RetryingRedis, fake: FakeAsyncRedis, faults: list[Fault]
) -> None:
    other = ArqRedis(connection_pool=fake.connection_pool, job_serializer=serialize)

    async def another_producer_wins(run: Run) -> None:
        await other.enqueue_job("upsert_project", _job_id="race", _queue_name=QUEUE, name="x")
        raise RedisConnectionError("Connection reset by peer")

    faults.append(another_producer_wins)
    assert (
        await pool.enqueue_job("upsert_project", _job_id="race", project_id="p", name="n") is None
    )
    assert await queued(fake) == ["race"]
    assert msgpack.unpackb(await fake.get(job_key_prefix + "race"))["k"] == {"name": "x"}


async def test_a_lost_reply_of_a_job_a_worker_has_finished_since_returns_the_job(
    pool: RetryingRedis, fake: FakeAsyncRedis, faults: list[Fault]
) -> None:
    async def applied_then_run_by_a_worker(run: Run) -> None:
        await run()
        raw = msgpack.unpackb(await fake.get(job_key_prefix + "done"))
        result = serialize_result(
            raw["f"], (), raw["k"], 1, raw["et"], True, {}, 0, 0, "ref", QUEUE, "done",
            serializer=serialize,
        )  # fmt: skip
        assert result is not None
        await fake.delete(job_key_prefix + "done")
        await fake.zrem(QUEUE, "done")
        await fake.set(result_key_prefix + "done", result)
        raise RedisConnectionError("Connection reset by peer")

    faults.append(applied_then_run_by_a_worker)
    job = await pool.enqueue_job("upsert_project", _job_id="done", project_id="p", name="n")
    assert job is not None and job.job_id == "done"
    assert await queued(fake) == []  # not enqueued again


async def test_retries_stop_when_the_time_is_up(
    pool: RetryingRedis, fake: FakeAsyncRedis, faults: list[Fault]
) -> None:
    pool.enqueue_retry_s = 0.3
    faults.extend([fails_with(RedisConnectionError("Connection refused"))] * 100)
    with pytest.raises(RedisConnectionError, match="refused"):
        await pool.enqueue_job("upsert_project", project_id="p", name="n")
    assert 2 <= pool.enqueue_retries["ConnectionError"] < 20
    assert await queued(fake) == []

    pool.enqueue_retry_s = 0
    faults[:] = [fails_with(BusyLoadingError("loading"))]
    with pytest.raises(BusyLoadingError):
        await pool.enqueue_job("upsert_project", project_id="p", name="n")
    assert "BusyLoadingError" not in pool.enqueue_retries


async def test_other_errors_are_not_retried(
    pool: RetryingRedis, fake: FakeAsyncRedis, faults: list[Fault]
) -> None:
    faults.append(fails_with(ResponseError("OOM command not allowed")))
    with pytest.raises(ResponseError, match="OOM"):
        await pool.enqueue_job("upsert_project", project_id="p", name="n")
    assert pool.enqueue_retries == {}


async def test_arguments_mean_what_they_mean_to_arq(
    pool: RetryingRedis, fake: FakeAsyncRedis
) -> None:
    job = await pool.enqueue_job("upsert_project", _defer_by=60, _queue_name="other", name="n")
    assert job is not None
    (member, score), = await fake.zrange("other", 0, -1, withscores=True)  # fmt: skip
    data = msgpack.unpackb(await fake.get(job_key_prefix + job.job_id))
    assert member.decode() == job.job_id and score == data["et"] + 60_000
    ttl = await fake.pttl(job_key_prefix + job.job_id)
    assert 60_000 < ttl <= 60_000 + pool.expires_extra_ms
    with pytest.raises(RuntimeError, match="defer_until"):
        await pool.enqueue_job("upsert_project", _defer_by=1, _defer_until=object())  # type: ignore[arg-type]


async def test_adopt_takes_over_the_pool_and_its_settings(fake: FakeAsyncRedis) -> None:
    plain = ArqRedis(
        connection_pool=fake.connection_pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=QUEUE,
        expires_extra_ms=123_000,
    )
    adopted = RetryingRedis.adopt(plain, enqueue_retry_s=7)
    assert adopted.connection_pool is plain.connection_pool
    assert (adopted.default_queue_name, adopted.expires_extra_ms) == (QUEUE, 123_000)
    assert (adopted.job_serializer, adopted.job_deserializer) == (serialize, deserialize)
    assert adopted.enqueue_retry_s == 7 and adopted.auto_close_connection_pool
