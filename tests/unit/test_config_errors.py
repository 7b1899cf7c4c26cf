"""A bad setting stops every command, ``arq pipeline.WorkerSettings`` included, before it
connects to anything: one line per bad setting on stderr, naming the variable and its rule and
never the value, and exit status 2. ``pipeline --version`` reports the installed version."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.cli import main
from pipeline.cli import status as cli_status
from pipeline.settings import Settings, configuration_errors, get_settings

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = str(Path(sys.executable).with_name("pipeline"))
ARQ = str(Path(sys.executable).with_name("arq"))
SECRET = "S3cretPassw0rd"
BAD_URL = f"mysql://u:{SECRET}@h/db"
PREFIX = "pipeline: configuration error: "
SCHEME_RULE = "PIPELINE_DATABASE_URL: URL scheme should be"


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``cwd`` with no PIPELINE_* variable but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return subprocess.run(
        command, env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def reported(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The configuration lines a process wrote, checked to be all it wrote, with status 2."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith(PREFIX) for line in lines), done.stderr
    return [line.removeprefix(PREFIX) for line in lines]


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """The process-wide settings read again for this test, and again after it."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version("pipeline-writes") == project["version"]
    assert capsys.readouterr().out == f"pipeline {project['version']}\n"


def test_version_from_the_console_script(tmp_path: Path) -> None:
    done = run([PIPELINE, "--version"], tmp_path, PIPELINE_DATABASE_URL=BAD_URL)
    assert (done.returncode, done.stdout) == (0, f"pipeline {version('pipeline-writes')}\n")


@pytest.mark.parametrize(
    "command",
    [
        ["ready"],
        ["status"],
        ["migrate"],
        ["worker", "--burst"],
        ["dead-letters", "list"],
        ["exporter"],
    ],
    ids=lambda command: command[0],
)
def test_a_bad_url_is_one_line_without_its_password(command: list[str], tmp_path: Path) -> None:
    done = run([PIPELINE, *command], tmp_path, PIPELINE_DATABASE_URL=BAD_URL)
    (line,) = reported(done)
    assert line.startswith(SCHEME_RULE), line
    assert SECRET not in done.stderr and "mysql" not in done.stderr


def test_arqs_command_reports_the_same_line(tmp_path: Path) -> None:
    worker = [ARQ, "pipeline.WorkerSettings", "--custom-log-dict", "pipeline.logs.ARQ_LOGGING"]
    done = run(worker, tmp_path, PIPELINE_DATABASE_URL=BAD_URL)
    (line,) = reported(done)
    assert line.startswith(SCHEME_RULE) and SECRET not in done.stderr + done.stdout


def test_every_bad_setting_has_its_line(tmp_path: Path) -> None:
    done = run(
        [PIPELINE, "ready"],
        tmp_path,
        PIPELINE_REDIS_URL=f"http://u:{SECRET}@h/0",
        PIPELINE_MAX_JOBS="0",
        PIPELINE_LOG_FORMAT="xml",
    )
    lines = reported(done)
    assert [line.split(":", 1)[0] for line in lines] == [
        "PIPELINE_REDIS_URL",
        "PIPELINE_MAX_JOBS",
        "PIPELINE_LOG_FORMAT",
    ]
    assert lines[1] == "PIPELINE_MAX_JOBS: Input should be greater than or equal to 1"
    assert lines[2] == "PIPELINE_LOG_FORMAT: Input should be 'auto', 'json' or 'console'"
    assert SECRET not in done.stderr


def test_a_list_that_is_not_json(tmp_path: Path) -> None:
    done = run([PIPELINE, "ready"], tmp_path, PIPELINE_REDIS_SENTINELS="h1:26379,h2:26379")
    (line,) = reported(done)
    assert line.startswith("PIPELINE_REDIS_SENTINELS: not valid JSON"), line


def test_the_env_file_counts_and_its_bad_log_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PIPELINE_LOG_FORMAT=xml\n")
    (line,) = reported(run([PIPELINE, "ready"], tmp_path))
    assert line == "PIPELINE_LOG_FORMAT: Input should be 'auto', 'json' or 'console'"


def test_the_lines_never_hold_a_value() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(database_url=BAD_URL, read_database_url=BAD_URL, metrics_port=SECRET)
    lines = configuration_errors(raised.value)
    assert [line.split(":", 1)[0] for line in lines] == [
        "PIPELINE_DATABASE_URL",
        "PIPELINE_READ_DATABASE_URL",
        "PIPELINE_METRICS_PORT",
    ]
    assert not any(SECRET in line or "mysql" in line for line in lines)


@pytest.mark.usefixtures("fresh_settings")
def test_status_reports_the_setting_not_a_shortened_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", BAD_URL)
    assert cli_status._status(argparse.Namespace(exact=False, json=True)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{PREFIX}{SCHEME_RULE}") and err.count("\n") == 1
    assert SECRET not in err


@pytest.mark.usefixtures("fresh_settings")
def test_main_returns_2_before_running_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIPELINE_JOB_TIMEOUT_S", "soon")
    assert main(["status"]) == 2
    assert capsys.readouterr().err == (
        f"{PREFIX}PIPELINE_JOB_TIMEOUT_S: Input should be a valid integer, unable to parse "
        "string as an integer\n"
    )


def test_an_unknown_sslmode_in_the_url_is_a_configuration_error(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:5432/db?sslmode=sometimes"
    done = run([PIPELINE, "migrate"], tmp_path, PIPELINE_DATABASE_URL=url)
    (line,) = reported(done)
    assert line == "PIPELINE_DATABASE_URL: sslmode= must be disable, prefer, require or verify-full"
    assert SECRET not in done.stderr
