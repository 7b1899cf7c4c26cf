"""The part of arq's private surface the batch worker stands on, pinned: an arq upgrade that
changes any of it fails here, by name, before anything misbehaves at run time.

``pipeline.worker.batch.claiming.BatchWorker`` overrides ``_poll_iteration`` and ``close``, calls
``heart_beat``, ``_cancel_aborted_jobs`` and ``_jobs_started``, shares arq's bookkeeping
attributes, and :class:`pipeline.worker.batch.runs.JobRun` follows ``Worker.run_job`` and
``finish_job`` rule for rule. ``arq pipeline.WorkerSettings`` adopts arq's ``Worker`` from inside
``main()``. When a hash below changes, read the new arq source beside ``JobRun``/the scripts, carry
the change over, run ``tests/arq_suite/run.py``, then update the hash and ``pyproject.toml``'s pin.
"""

from __future__ import annotations

import hashlib
import inspect
from importlib.metadata import version

import arq.constants
import arq.worker
import pytest
from arq import cron, func
from arq.cron import CronJob
from arq.jobs import deserialize_job_raw, serialize_result
from arq.worker import Function, Worker

from pipeline.worker.batch.claiming import BatchWorker
from pipeline.worker.service import PipelineWorker

#: sha256 (first 16 hex digits) of the arq 0.28 methods the batch worker mirrors or relies on.
MIRRORED = {
    "main": "45ca1591c9717466",
    "_poll_iteration": "f8d39d823a0a59f2",
    "_cancel_aborted_jobs": "54575eaf8682f95b",
    "start_jobs": "b45797cfa40bed7f",
    "run_job": "589a19059ff84ee7",
    "finish_job": "903f09c92830d3fd",
    "finish_failed_job": "3e16087f318a7acf",
    "heart_beat": "2e9959bea66dc551",
    "close": "5bcc9cb356680829",
    "_jobs_started": "c5643370c110c7cd",
}


def test_arq_is_the_tested_minor_version() -> None:
    assert version("arq").startswith("0.28."), "run tests/arq_suite/run.py, then widen the pin"


@pytest.mark.parametrize("name", sorted(MIRRORED))
def test_the_mirrored_arq_methods_are_unchanged(name: str) -> None:
    source = inspect.getsource(getattr(Worker, name))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == MIRRORED[name], f"arq's Worker.{name} changed: see this module's docstring"


def test_main_starts_up_inside_itself_then_polls() -> None:
    """Adoption finds the worker through ``main``'s frame, during ``on_startup``, before the
    first poll: both calls must stay in ``main`` in that order."""
    source = inspect.getsource(Worker.main)
    startup = source.index("await self.on_startup(self.ctx)")  # raises if it is gone
    assert startup < source.index("await self._poll_iteration()")


def test_the_methods_called_take_what_they_are_given() -> None:
    def parameters(function: object) -> list[str]:
        return list(inspect.signature(function).parameters)  # type: ignore[arg-type]

    assert parameters(Worker._poll_iteration) == ["self"]
    assert parameters(Worker._cancel_aborted_jobs) == ["self"]
    assert parameters(Worker.heart_beat) == ["self"]
    assert parameters(Worker._jobs_started) == ["self"]
    assert parameters(deserialize_job_raw) == ["r", "deserializer"]
    assert parameters(serialize_result) == [
        "function",
        "args",
        "kwargs",
        "job_try",
        "enqueue_time_ms",
        "success",
        "result",
        "start_ms",
        "finished_ms",
        "ref",
        "queue_name",
        "job_id",
        "serializer",
    ]


async def _noop(ctx: dict[str, object]) -> None:
    return None


async def test_the_shared_attributes_exist() -> None:
    # async: arq's Worker takes the running loop (in a sync test it would open one, never closed)
    worker = Worker(functions=[func(_noop, name="noop")], cron_jobs=[cron(_noop, name="tick")])
    for name in (
        "_pool",
        "tasks",
        "job_tasks",
        "aborting_tasks",
        "job_counter",
        "allow_pick_jobs",
        "in_progress_timeout_s",
        "queue_read_limit",
        "max_jobs",
        "max_burst_jobs",
        "burst",
        "ctx",
        "functions",
        "cron_jobs",
        "retry_jobs",
        "allow_abort_jobs",
        "log_results",
        "on_job_start",
        "on_job_end",
        "after_job_end",
        "keep_result_s",
        "keep_result_forever",
        "max_tries",
        "job_timeout_s",
        "job_serializer",
        "job_deserializer",
        "queue_name",
        "jobs_complete",
        "jobs_failed",
        "jobs_retried",
    ):
        assert hasattr(worker, name), f"arq's Worker has no {name} any more"
    assert isinstance(worker.functions["noop"], Function)
    assert isinstance(worker.functions["tick"], CronJob)  # cron jobs are looked up by name
    for job in (worker.functions["noop"], worker.functions["tick"]):
        for name in ("coroutine", "timeout_s", "keep_result_s", "keep_result_forever", "max_tries"):
            assert hasattr(job, name), f"arq's {type(job).__name__} has no {name} any more"
    assert arq.worker.logger.name == "arq.worker"


def test_the_key_layout() -> None:
    assert arq.constants.in_progress_key_prefix == "arq:in-progress:"
    assert arq.constants.job_key_prefix == "arq:job:"
    assert arq.constants.retry_key_prefix == "arq:retry:"
    assert arq.constants.result_key_prefix == "arq:result:"
    assert arq.constants.abort_jobs_ss == "arq:abort"
    assert arq.constants.keep_cronjob_progress == 60


async def test_a_stock_worker_can_be_adopted() -> None:
    worker = Worker(functions=[func(_noop, name="noop")], ctx={"kept": True})
    PipelineWorker.adopt(worker)
    assert type(worker) is PipelineWorker and worker.ctx == {"kept": True}
    assert worker._deadlines == {} and worker.log_jobs is False  # its own state is set up
    with pytest.raises(TypeError):
        BatchWorker.adopt(worker)  # already adopted: only arq's own class is


def test_the_batch_worker_shows_arqs_signature() -> None:
    """arq's command and ``create_worker`` pick a settings class's options by ``Worker``'s
    signature; with the batch worker in ``Worker``'s place they must still find them all."""
    assert inspect.signature(PipelineWorker) == inspect.signature(Worker)
    assert "queue_read_limit" in inspect.signature(BatchWorker).parameters
