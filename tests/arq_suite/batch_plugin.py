"""pytest plugin: arq's own test suite with the batch worker as arq's ``Worker``
(``pipeline.worker.batch.claiming.BatchWorker``).

Loaded with ``-p batch_plugin`` (``run.py`` puts this directory on ``PYTHONPATH``), so it is
imported before arq's conftest.py and test modules: every name in arq's modules bound to arq's
``Worker`` (``arq.Worker``, ``arq.worker.Worker``, which ``create_worker`` and ``run_worker``
look up when called) is rebound to ``BatchWorker``, which was defined on the original class.

Sanity checks, so that a swap that silently missed cannot pass for a clean run: after
collection, every collected module and conftest that holds a ``Worker`` must hold
``BatchWorker``; at the end, no stock ``Worker`` may have been built and at least
``--batch-min-built`` ``BatchWorker`` s must have been (``run.py`` passes 0 and checks the
counts written to ``--batch-report`` over all of a run's sessions instead). A failed check ends
the session with a pytest exit status above 1, which ``run.py`` takes for a broken harness.
"""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import arq
import arq.worker
import pytest

from pipeline.worker.batch.claiming import BatchWorker

STOCK_WORKER = arq.worker.Worker
assert STOCK_WORKER is not BatchWorker and issubclass(BatchWorker, STOCK_WORKER)

#: Workers built during the session: "BatchWorker", or the name of a class that is not one.
built: Counter[str] = Counter()
_stock_init = STOCK_WORKER.__init__


@functools.wraps(_stock_init)  # keeps inspect.signature(STOCK_WORKER) as arq's
def _counted_init(self: Any, *args: Any, **kwargs: Any) -> None:
    built["BatchWorker" if isinstance(self, BatchWorker) else type(self).__qualname__] += 1
    _stock_init(self, *args, **kwargs)


def _swap() -> list[str]:
    """Rebind every arq module's names for the stock Worker; the rebound names."""
    swapped = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "arq" or name.startswith("arq.")):
            continue
        for attr, value in list(vars(module).items()):
            if value is STOCK_WORKER:
                setattr(module, attr, BatchWorker)
                swapped.append(f"{name}.{attr}")
    return swapped


STOCK_WORKER.__init__ = _counted_init  # type: ignore[method-assign]
SWAPPED = _swap()
assert "arq.worker.Worker" in SWAPPED and "arq.Worker" in SWAPPED, SWAPPED
assert arq.worker.Worker is BatchWorker and arq.Worker is BatchWorker


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("batch worker")
    group.addoption(
        "--batch-min-built",
        type=int,
        default=1,
        help="fail the session unless at least this many BatchWorkers were built",
    )
    group.addoption(
        "--batch-report", default=None, help="write the counts of workers built to this JSON file"
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    modules = {item.module for item in session.items if isinstance(item, pytest.Function)}
    modules |= {
        plugin
        for plugin in session.config.pluginmanager.get_plugins()
        if getattr(plugin, "__file__", "").endswith("conftest.py")
    }
    stock = sorted(m.__name__ for m in modules if getattr(m, "Worker", None) is STOCK_WORKER)
    if stock:
        raise pytest.UsageError(f"these modules still hold arq's stock Worker: {stock}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts = ", ".join(f"{n} {name}" for name, n in sorted(built.items())) or "none"
    terminalreporter.write_line(f"workers built: {counts} (arq names swapped: {SWAPPED})")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    report = session.config.getoption("--batch-report")
    if report:
        Path(report).write_text(json.dumps(dict(built)))
    stock = {name: n for name, n in built.items() if name != "BatchWorker"}
    too_few = built["BatchWorker"] < session.config.getoption("--batch-min-built")
    if stock or too_few:
        print(f"\nbatch_plugin: the swap did not take: workers built {dict(built)}", flush=True)
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
