"""Import direction: the read side never loads the write path, the producer never loads the
worker, and ``pipeline.WorkerSettings`` is there for ``arq pipeline.WorkerSettings``."""

from __future__ import annotations

import subprocess
import sys

import pytest

WRITE_PATH = (
    "pipeline.kinds",
    "pipeline.worker.coalescer",
    "pipeline.worker.jobs",
    "pipeline.worker.service",
    "pipeline.producer.client",
)
# arq's own package imports arq.worker, so the producer can only keep the pipeline's worker out.
WORKER = ("pipeline.worker", "pipeline.ops", "pipeline.cli", "pipeline.bench")


def loaded_after(statement: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running ``statement``."""
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return out.split()


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import pipeline.reads", WRITE_PATH),
        ("from pipeline.reads import TaxonomyReads", WRITE_PATH),
        ("import pipeline; pipeline.create_pool", WORKER),
        ("from pipeline import PipelineClient", WORKER),
        ("from pipeline import CoalescingClient, Receipt", WORKER),
    ],
)
def test_import_direction(statement: str, forbidden: tuple[str, ...]) -> None:
    loaded = loaded_after(statement)
    assert "pipeline" in loaded
    assert [m for m in loaded if m.startswith(forbidden)] == []


def test_worker_settings_is_exported_lazily() -> None:
    loaded = loaded_after("import pipeline; assert pipeline.WorkerSettings.functions")
    assert "pipeline.worker.service" in loaded


def test_the_public_api_is_what_a_producer_uses() -> None:
    import pipeline

    assert {"create_pool", "PipelineClient", "CoalescingClient", "Receipt"} <= set(pipeline.__all__)
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None
