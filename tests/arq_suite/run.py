"""arq's own test suite, run once with stock arq and once with pipeline's BatchWorker in its place.

Why: ``pipeline.worker.batch.claiming.BatchWorker`` replaces how arq's ``Worker`` claims and
finishes jobs and promises to keep every other rule of arq's job life cycle. arq's own tests pin
that life cycle down, so every test that passes with stock arq must pass with the batch worker too.

What it does:

1. Takes the installed arq's version and, once per version, downloads arq's sdist
   (``pip download --no-binary :all:``) and keeps its ``tests/`` and ``pyproject.toml`` under
   ``.cache/arq-suite/<version>/sdist``.
2. Keeps a venv of its own, ``.cache/arq-suite/venv``: this project (editable) and the suite's
   test dependencies, pinned below; it is made again when any of its inputs changes.
3. Copies the suite to ``.cache/arq-suite/<version>/suite`` and rewrites it (each rewrite fails
   loudly, naming its target, when its target is gone after an arq upgrade): the Redis fixtures
   of its conftest.py are replaced by ``local_redis.py``'s (the local Redis, on a database number
   claimed like ``tests/conftest.py`` claims one), every FLUSHALL becomes FLUSHDB, the CLI tests'
   worker uses that database, and key listings leave out the claim key.
4. Runs the suite with its own pytest settings (arq's ``[tool.pytest.ini_options]``, not this
   repo's) twice: with stock arq, and with ``-p batch_plugin``, which swaps ``BatchWorker`` in
   for ``arq.worker.Worker`` and checks that the workers the suite builds are BatchWorkers.
   Both load ``-p watchdog_plugin``: a test still running ``HARD_TIMEOUT_S`` after it started
   (pytest-timeout's exception swallowed) is recorded as hung and ends its session, and the
   tests after it run in a new one, so one hang neither stalls CI nor loses the other results.
5. Compares the two junit reports: a test regresses when it passed with stock arq and did not
   pass with the batch worker. Regressions are run again (both ways) up to twice more; a test
   that passes with the batch worker on any run is reported as flaky, not as a regression.

Exit status: 0 when nothing regresses but what ``ALLOW_LIST`` names; 1 when something else
regresses; 2 when the harness itself is broken (a run collected nothing or could not finish,
the batch worker was not swapped in, or fewer than ``MIN_STOCK_PASSED`` tests passed with stock
arq).

The allow-list rule: a test goes into ``ALLOW_LIST`` only for a deliberate, documented
difference between the batch worker and arq, with its justification as the value. Any other
regression is a bug in ``pipeline/worker/batch/claiming.py``, to be fixed there, not listed here.

Run it from the repository root with the project's venv: ``.venv/bin/python
tests/arq_suite/run.py`` (``./run test`` does, after the main pytest run). It needs the local
Redis on 127.0.0.1:6379 (``PIPELINE_TEST_REDIS_URL`` overrides the base URL) and never flushes
any database but the one it claimed.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Tests allowed to regress, each with why the batch worker deliberately differs from arq.
#: Stock arq's ``_poll_iteration`` lets a Redis error out, which ends the worker; BatchWorker's
#: catches RedisError/OSError, logs it and polls again. These tests expect the error out.
ALLOW_LIST: dict[str, str] = {
    "tests/test_worker.py::test_worker_retry[exception_thrown0]": (
        "a dropped Redis connection (ConnectionError) does not end the worker"
    ),
    "tests/test_worker.py::test_worker_retry[exception_thrown1]": (
        "a dropped Redis connection (read TimeoutError) does not end the worker"
    ),
    "tests/test_worker.py::test_worker_crash[exception_thrown0]": (
        "a dropped Redis connection (ConnectionError) does not end the worker"
    ),
    "tests/test_worker.py::test_worker_crash[exception_thrown1]": (
        "a dropped Redis connection (read TimeoutError) does not end the worker"
    ),
}

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = REPO / ".cache" / "arq-suite"
VENV = CACHE / "venv"

#: The suite's test dependencies (arq's ``testing`` group, less coverage, pytest-pretty and
#: testcontainers), at the versions of arq 0.28.0's uv.lock; msgpack and pydantic come with
#: the project, at its versions.
TEST_DEPS = (
    "pytest==8.4.2",
    "pytest-asyncio==0.23.6",  # the suite's `loop` fixture asks for `event_loop`, gone in 1.0
    "pytest-mock==3.15.1",
    "pytest-timeout==2.4.0",
    "dirty-equals==0.11",
    "pytz==2025.2",
    "tzdata==2025.3",
    "watchfiles==1.1.1",  # arq's CI installs its `watch` extra; test_run_watch patches it
)

#: Added to the suite's filterwarnings: arq 0.28 closes pools with redis-py 5's deprecated
#: close() (its lock file has redis 4.6, where close() is not deprecated).
EXTRA_WARNING_FILTERS = ("ignore:Call to deprecated close:DeprecationWarning",)

#: Where local_redis.py finds Redis unless PIPELINE_TEST_REDIS_URL says otherwise.
REDIS_DEFAULT_URL = "redis://127.0.0.1:6379"
#: The key tests/conftest.py and local_redis.py claim a Redis database with.
SESSION_KEY = "pipeline:test-session"
#: Fixtures of arq's conftest.py that local_redis.py replaces (each must still be in arq's).
REPLACED_FIXTURES = (
    "redis_container",
    "test_redis_host",
    "test_redis_port",
    "test_redis_settings",
    "arq_redis",
    "arq_redis_msgpack",
    "arq_redis_retry",
)
#: Fixtures local_redis.py adds: the claimed database, and its claim kept through each test.
ADDED_FIXTURES = ("redis_claim", "_redis_claim_kept")

MIN_STOCK_PASSED = 100
RERUNS = 2
#: A test still running this long after it started (pytest-timeout did not end it) ends its
#: session; HUNG_EXIT is watchdog_plugin's exit status then.
HARD_TIMEOUT_S = 40.0
HUNG_EXIT = 70
#: Past this a pytest session is killed (a whole run takes well under a minute).
RUN_TIMEOUT_S = 15 * 60


class HarnessError(Exception):
    """The harness, not the worker, is broken: the comparison would mean nothing."""


@dataclass(frozen=True)
class Rewrite:
    """A substitution in the suite's files matching ``files``: ``target`` is literal text, or
    a regex if ``regex``; it must be found at least once over all of those files."""

    files: str
    target: str
    replacement: str
    regex: bool = False

    def apply(self, text: str) -> tuple[str, int]:
        """``text`` rewritten, and how many times the target was found in it."""
        if self.regex:
            return re.subn(self.target, self.replacement, text)
        return text.replace(self.target, self.replacement), text.count(self.target)


REWRITES = (
    # arq's conftest names testcontainers' class in an annotation; testcontainers is not used.
    Rewrite(
        "conftest.py",
        "from testcontainers.redis import RedisContainer\n",
        "from local_redis import RedisContainer\n",
    ),
    # The CLI tests' worker builds its own RedisSettings (database 0): use the claimed database.
    Rewrite(
        "test_cli.py",
        "def setup_worker_connection(test_redis_host: str, test_redis_port: int):\n"
        "    WorkerSettings.redis_settings = "
        "RedisSettings(host=test_redis_host, port=test_redis_port)\n",
        "def setup_worker_connection(test_redis_settings: RedisSettings):\n"
        "    WorkerSettings.redis_settings = test_redis_settings\n",
    ),
    # Tests that list every key must not see the claim key, which stays in the database.
    Rewrite(
        "test_*.py",
        r"await (\w+)\.keys\('\*'\)",
        rf"[k for k in await \1.keys('*') if k != {SESSION_KEY.encode()!r}]",
        regex=True,
    ),
)


@dataclass(frozen=True)
class Outcome:
    status: str  # passed, failed, error, skipped, hung, or missing (not in the report)
    message: str = ""


@dataclass(frozen=True)
class Run:
    outcomes: dict[str, Outcome]
    seconds: float
    built: int = 0  # BatchWorkers built (batch runs)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    def passed(self, test: str) -> bool:
        return self.outcomes.get(test, Outcome("missing")).status == "passed"

    def line(self) -> str:
        statuses = ("passed", "failed", "error", "skipped", "hung")
        counts = ", ".join(f"{self.count(s)} {s}" for s in statuses)
        workers = f", {self.built} BatchWorkers built" if self.built else ""
        return f"{len(self.outcomes)} tests: {counts}, in {self.seconds:.1f} s{workers}"


def step(message: str) -> None:
    print(f"--> {message}", flush=True)


def quiet(cmd: Sequence[str | Path], what: str) -> None:
    """Run ``cmd``, showing its output only if it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stdout.write(done.stdout + done.stderr)
        raise HarnessError(f"{what} failed (exit {done.returncode})")


@contextmanager
def locked() -> Iterator[None]:
    """One run at a time per checkout: runs share the cache and the venv."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def check_redis() -> None:
    """Fail at once, not in every test, when Redis does not answer."""
    url = urllib.parse.urlsplit(os.environ.get("PIPELINE_TEST_REDIS_URL", REDIS_DEFAULT_URL))
    address = (url.hostname or "127.0.0.1", url.port or 6379)
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as exc:
        raise HarnessError(f"Redis does not answer at {address[0]}:{address[1]} ({exc})") from exc


def fetch_sdist(version: str, sdist: Path) -> None:
    """arq's sdist's tests/ and pyproject.toml, downloaded once per version."""
    if (sdist / ".complete").exists():
        return
    step(f"downloading arq {version}'s sdist for its tests")
    start = time.monotonic()
    shutil.rmtree(sdist, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        quiet(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
            + ["--no-deps", "--no-binary", ":all:", f"arq=={version}", "-d", tmp],
            "pip download",
        )
        archives = list(Path(tmp).glob("*.tar.gz"))
        if len(archives) != 1:
            raise HarnessError(f"expected one sdist from pip download, got {archives}")
        with tarfile.open(archives[0]) as tar:
            top = tar.getnames()[0].split("/")[0]
            wanted = [
                m
                for m in tar.getmembers()
                if m.name == f"{top}/pyproject.toml" or m.name.startswith(f"{top}/tests/")
            ]
            tar.extractall(tmp, members=wanted, filter="data")
        if not (Path(tmp) / top / "tests" / "conftest.py").exists():
            raise HarnessError(f"arq {version}'s sdist has no tests/conftest.py")
        sdist.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(tmp) / top, sdist)
    (sdist / ".complete").touch()
    print(f"    downloaded in {time.monotonic() - start:.1f} s", flush=True)


def ensure_venv(version: str) -> Path:
    """The suite's venv (made again when Python, arq, the pins or the project's deps change)."""
    stamp = {
        "python": sys.version,
        "arq": version,
        "deps": list(TEST_DEPS),
        "project": hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest(),
        "root": str(REPO),
    }
    python = VENV / "bin" / "python"
    stamp_file = VENV / "pipeline-stamp.json"
    if python.exists() and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return python
    step(f"creating {VENV.relative_to(REPO)}: the project and the suite's test dependencies")
    start = time.monotonic()
    shutil.rmtree(VENV, ignore_errors=True)
    quiet([sys.executable, "-m", "venv", VENV], "creating the venv")
    install: list[str | Path] = [python, "-m", "pip", "install", "--quiet"]
    install += ["--disable-pip-version-check", "-e", REPO, f"arq=={version}", *TEST_DEPS]
    quiet(install, "installing the suite's dependencies")
    stamp_file.write_text(json.dumps(stamp))
    print(f"    made in {time.monotonic() - start:.1f} s", flush=True)
    return python


def _flushdb(match: re.Match[str]) -> str:
    word = match.group(0)
    return "FLUSHDB" if word.isupper() else "flushdb"


def rewrite_suite(tests: Path) -> None:
    """Apply the rewrites to the suite's copy in ``tests``; raise if any target is gone."""
    files = sorted(tests.rglob("*.py"))
    flushes = 0
    for path in files:
        text, n = re.subn(r"(?i)flushall", _flushdb, path.read_text())
        flushes += n
        if re.search(r"(?i)flushall", text):
            raise HarnessError(f"{path.name} still has a FLUSHALL after the rewrite")
        path.write_text(text)
    if flushes == 0:
        raise HarnessError("rewrite target 'flushall' (any case) found nothing in arq's tests")
    for rewrite in REWRITES:
        found = 0
        for path in files:
            if path.match(rewrite.files):
                text, n = rewrite.apply(path.read_text())
                found += n
                path.write_text(text)
        if found == 0:
            raise HarnessError(
                f"rewrite target {rewrite.target!r} found nothing in {rewrite.files}: "
                "arq's tests changed; update tests/arq_suite/run.py"
            )
    conftest = tests / "conftest.py"
    text = conftest.read_text()
    for name in REPLACED_FIXTURES:
        if not re.search(rf"def {name}\(|name='{name}'", text):
            raise HarnessError(f"arq's conftest.py no longer defines the fixture {name!r}")
    names = ", ".join(REPLACED_FIXTURES + ADDED_FIXTURES)
    conftest.write_text(
        text + "\n\n# Replaced by pipeline's tests/arq_suite/run.py: the local Redis, on a "
        "database of this run's own.\n"
        f"from local_redis import {names}  # noqa: E402, F401, F811\n"
    )


def ini_value(value: object) -> str:
    if isinstance(value, list):
        return "".join(f"\n    {v}" for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def prepare_suite(sdist: Path, suite: Path) -> None:
    """A fresh, rewritten copy of the suite, with arq's pytest settings in its pytest.ini."""
    shutil.rmtree(suite, ignore_errors=True)
    shutil.copytree(sdist / "tests", suite / "tests")
    rewrite_suite(suite / "tests")
    options = tomllib.loads((sdist / "pyproject.toml").read_text())["tool"]["pytest"]
    options = dict(options["ini_options"])
    options["filterwarnings"] = list(options.get("filterwarnings", [])) + list(
        EXTRA_WARNING_FILTERS
    )
    lines = ["[pytest]"] + [f"{key} = {ini_value(value)}" for key, value in options.items()]
    (suite / "pytest.ini").write_text("\n".join(lines) + "\n")


def node_id(case: ET.Element) -> str:
    """The pytest node id of a junit (xunit1) test case."""
    file, classname, name = case.get("file"), case.get("classname", ""), case.get("name", "")
    if not file:  # a collection error: classname is the module's dotted name
        return f"{classname}::{name}" if name else classname
    module = file.removesuffix(".py").replace("/", ".")
    classes = classname.removeprefix(module).strip(".")
    return "::".join([file, *classes.split(".")] if classes else [file]) + f"::{name}"


def reason(element: ET.Element) -> str:
    """A failure's first two ``E`` lines (the second often names the real exception), or its
    message."""
    lines = [line[1:].strip() for line in (element.text or "").splitlines() if line[:2] == "E "]
    text = " | ".join(lines[:2]) or (element.get("message") or "").strip()
    return re.sub(r"\s+", " ", text)[:240]


def read_junit(path: Path) -> dict[str, Outcome]:
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = Outcome("passed")
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = "failed" if child.tag == "failure" else child.tag
                outcome = Outcome(status, reason(child))
                break
        outcomes[node_id(case)] = outcome
    return outcomes


@dataclass(frozen=True)
class Segment:
    """One pytest session of a run: its outcomes and, if it hung, the hung test and the tests
    it had collected."""

    outcomes: dict[str, Outcome]
    built: int
    hung: str | None = None
    collected: tuple[str, ...] = ()


def read_progress(progress: Path) -> list[dict[str, Any]]:
    if not progress.exists():
        return []
    return [json.loads(line) for line in progress.read_text().splitlines() if line]


def release_claim(events: list[dict[str, Any]]) -> None:
    """Release the Redis database a killed session held (only if it still holds it)."""
    import redis  # the project's dependency; only needed after a kill

    for event in events:
        if "claim" in event:
            client = redis.Redis.from_url(event["claim"])
            try:
                if client.get(SESSION_KEY) == event["token"].encode():
                    client.flushdb()
            finally:
                client.close()


def run_pytest(python: Path, suite: Path, mode: str, name: str, tests: Sequence[str]) -> Segment:
    """One pytest session over ``tests`` (all of them if empty) with ``mode`` stock or batch."""
    results = suite.parent / "results"
    results.mkdir(exist_ok=True)
    xml, log = results / f"{name}.xml", results / f"{name}.log"
    progress, built = results / f"{name}.progress.jsonl", results / f"{name}.built.json"
    for path in (xml, progress, built):
        path.unlink(missing_ok=True)
    cmd: list[str | Path] = [python, "-m", "pytest", "-c", "pytest.ini", "--rootdir", "."]
    cmd += ["-p", "no:cacheprovider", "-o", "junit_family=xunit1", f"--junitxml={xml}", "-q"]
    cmd += ["-p", "watchdog_plugin", f"--progress={progress}", f"--hard-timeout={HARD_TIMEOUT_S}"]
    if mode == "batch":
        # run.py checks the count over all segments: a segment may build no worker
        cmd += ["-p", "batch_plugin", "--batch-min-built=0", f"--batch-report={built}"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    env["PYTHONPATH"] = str(HERE)  # local_redis, watchdog_plugin and batch_plugin
    with log.open("w") as out:
        try:
            done = subprocess.run(
                [*cmd, *tests],
                cwd=suite,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=RUN_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            release_claim(read_progress(progress))
            raise HarnessError(f"the {name} run took over {RUN_TIMEOUT_S} s; see {log}") from exc
    events = read_progress(progress)
    if done.returncode == HUNG_EXIT:
        hung = next(e["hung"] for e in events if "hung" in e)
        outcomes = {e["test"]: Outcome(e["status"], e["message"]) for e in events if "test" in e}
        collected = next(e["collected"] for e in events if "collected" in e)
        return Segment(outcomes, 0, hung, tuple(collected))
    if done.returncode not in (0, 1) or not xml.exists():
        print("\n".join(log.read_text().splitlines()[-40:]))
        raise HarnessError(f"the {name} run ended with pytest exit {done.returncode}; see {log}")
    count = json.loads(built.read_text()).get("BatchWorker", 0) if built.exists() else 0
    return Segment(read_junit(xml), count)


def run_suite(python: Path, suite: Path, mode: str, name: str, tests: Sequence[str] = ()) -> Run:
    """Run the suite (or ``tests`` of it) with ``mode`` stock or batch: a test that hangs ends
    its session, and the tests after it run in a new one."""
    start = time.monotonic()
    outcomes: dict[str, Outcome] = {}
    built, remaining, part = 0, list(tests), name
    for segment in itertools.count(2):
        done = run_pytest(python, suite, mode, part, remaining)
        outcomes.update(done.outcomes)
        built += done.built
        if done.hung is None:
            break
        outcomes[done.hung] = Outcome(
            "hung", f"still running {HARD_TIMEOUT_S:.0f} s after it started: session ended"
        )
        remaining = [t for t in done.collected if t not in outcomes]
        print(f"    hung: {done.hung}; {len(remaining)} tests still to run", flush=True)
        if not remaining:
            break
        part = f"{name}-part{segment}"
    run = Run(outcomes, time.monotonic() - start, built)
    if not run.outcomes:
        raise HarnessError(f"the {name} run collected no tests")
    if mode == "batch" and not tests and built == 0:
        raise HarnessError(f"the {name} run built no BatchWorker: the swap did not take")
    return run


def compare(
    python: Path, suite: Path, stock: Run, batch: Run
) -> tuple[dict[str, Outcome], list[str]]:
    """The tests that passed with stock arq and never with the batch worker (in 1 + RERUNS
    tries), with their last outcome, and those that passed with it on a rerun (flaky)."""
    pending = [t for t in stock.outcomes if stock.passed(t) and not batch.passed(t)]
    latest = {t: batch.outcomes.get(t, Outcome("missing")) for t in pending}
    flaky: list[str] = []
    for attempt in range(1, RERUNS + 1):
        if not pending:
            break
        step(f"rerun {attempt} of the {len(pending)} regressing tests, with each worker")
        again = run_suite(python, suite, "batch", f"batch-rerun-{attempt}", pending)
        confirm = run_suite(python, suite, "stock", f"stock-rerun-{attempt}", pending)
        print(f"    batch: {again.line()}\n    stock: {confirm.line()}", flush=True)
        for test in pending:
            if not confirm.passed(test):
                print(f"    note: {test} did not pass with stock arq on this rerun either")
            latest[test] = again.outcomes.get(test, Outcome("missing"))
        flaky += [t for t in pending if again.passed(t)]
        pending = [t for t in pending if not again.passed(t)]
    return {t: latest[t] for t in pending}, flaky


def report(stock: Run, regressions: dict[str, Outcome], flaky: list[str]) -> int:
    bugs = [t for t in regressions if t not in ALLOW_LIST]
    print(f"regressions (passed with stock arq, never with BatchWorker): {len(regressions)}")
    for test, outcome in regressions.items():
        verdict = "allow-listed" if test in ALLOW_LIST else "NOT ALLOWED"
        print(f"    {verdict}: {test}\n        {outcome.status}: {outcome.message}")
        if test in ALLOW_LIST:
            print(f"        allowed because {ALLOW_LIST[test]}")
    for test in flaky:
        print(f"    flaky (passed with BatchWorker on a rerun): {test}")
    for test in sorted(set(ALLOW_LIST) - set(regressions)):
        print(f"    allow-listed but not regressing (remove it?): {test}")
    for test, outcome in stock.outcomes.items():
        if outcome.status in ("failed", "error"):
            print(f"    fails with stock arq too (not compared): {test}")
    if bugs:
        print(f"FAILED: {len(bugs)} tests pass with stock arq and not with BatchWorker")
        return 1
    print("OK: BatchWorker passes every test stock arq passes, but the allow-listed ones")
    return 0


def main() -> int:
    try:
        version = importlib.metadata.version("arq")
    except importlib.metadata.PackageNotFoundError:
        print("arq is not installed: run this with the project's venv (.venv/bin/python)")
        return 2
    start = time.monotonic()
    try:
        with locked():
            check_redis()
            fetch_sdist(version, CACHE / version / "sdist")
            python = ensure_venv(version)
            suite = CACHE / version / "suite"
            prepare_suite(CACHE / version / "sdist", suite)
            step(f"arq {version}'s suite with stock arq.worker.Worker")
            stock = run_suite(python, suite, "stock", "stock")
            print(f"    stock: {stock.line()}", flush=True)
            if stock.count("passed") < MIN_STOCK_PASSED:
                first = next(o for o in stock.outcomes.values() if o.status != "passed")
                raise HarnessError(
                    f"only {stock.count('passed')} tests passed with stock arq (expected "
                    f"{MIN_STOCK_PASSED} at least); the first other: {first.message}"
                )
            step(f"arq {version}'s suite with pipeline.worker.batch.claiming.BatchWorker")
            batch = run_suite(python, suite, "batch", "batch")
            print(f"    batch: {batch.line()}", flush=True)
            regressions, flaky = compare(python, suite, stock, batch)
    except HarnessError as exc:
        print(f"HARNESS BROKEN: {exc}", flush=True)
        return 2
    status = report(stock, regressions, flaky)
    print(f"arq's suite took {time.monotonic() - start:.1f} s in all", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
