"""Configuration: one pydantic-settings class, read from ``PIPELINE_*`` environment variables.

Defaults work against PostgreSQL and Redis on 127.0.0.1, so a developer needs no configuration.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal, TextIO
from urllib.parse import parse_qs

from pydantic import Field, PostgresDsn, RedisDsn, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError


class Settings(BaseSettings):
    """Every knob of the pipeline; each field is ``PIPELINE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", env_file=".env", extra="ignore")

    database_url: PostgresDsn = Field(
        default=PostgresDsn("postgresql+asyncpg://postgres@127.0.0.1:5432/pipeline"),
        description="SQLAlchemy URL of the PostgreSQL primary (asyncpg driver).",
    )
    read_database_url: PostgresDsn | None = Field(
        default=None, description="Optional replica for the read repository."
    )
    redis_url: RedisDsn = Field(
        default=RedisDsn("redis://127.0.0.1:6379/0"), description="Redis holding the arq queue."
    )
    redis_sentinels: list[str] = Field(
        default_factory=list,
        description='Redis Sentinel addresses, JSON: ["host:port", …]; the URL then gives only '
        "the database number and the password.",
    )
    redis_sentinel_master: str = Field(
        default="mymaster", description="The Sentinel service name of the Redis primary."
    )
    queue_name: str = Field(default="pipeline:queue", description="arq queue name.")
    enqueue_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="How long enqueue_job (producers made by pipeline.create_pool) keeps "
        "retrying while Redis restarts or fails over before it raises; 0: no retry.",
    )

    client_wait_s: float = Field(
        default=60.0,
        gt=0,
        description="How long PipelineClient.write and CoalescingClient's wait=True wait for a "
        "job's commit before raising StillQueued (the job stays queued); per call: timeout=.",
    )

    db_ssl_mode: Literal["disable", "prefer", "require", "verify-full"] = Field(
        default="prefer",
        description="TLS to PostgreSQL: disable; prefer (TLS if the server offers it); require "
        "(encrypted, certificate not checked); verify-full (certificate checked against "
        "db_ssl_root_cert, or the system's CAs, and the host name). A URL's sslmode= counts "
        "when this is left at prefer.",
    )
    db_ssl_root_cert: Path | None = Field(
        default=None, description="CA bundle (PEM) that verify-full checks the server against."
    )
    db_pool_size: int = Field(default=4, ge=1, description="Connections kept in the pool.")
    db_max_overflow: int = Field(default=4, ge=0, description="Extra connections under load.")

    max_jobs: int = Field(
        default=1000, ge=1, description="Jobs one worker runs at once; batches form from these."
    )
    batch_max_rows: int = Field(
        default=200_000, ge=1, description="Rows per flushed batch (one transaction), at most."
    )
    flushers: int = Field(
        default=1,
        ge=1,
        description=(
            "Batches one worker commits at once (each on its own connection). More than one "
            "helps single-write jobs a little and hurts hot keys: concurrent batches of one "
            "worker then wait on each other's row locks."
        ),
    )
    job_max_items: int = Field(default=5000, ge=1, description="Items one job may carry.")
    job_max_bytes: int = Field(
        default=1_048_576, ge=1024, description="Size of one serialized job, at most."
    )
    job_timeout_s: int = Field(
        default=20, ge=1, description="arq job timeout; a killed worker's jobs rerun after +10 s."
    )
    job_expiry_s: int = Field(
        default=7 * 86_400,
        ge=60,
        description="How long a job waits in Redis past its due time before arq drops it "
        "(producers made by pipeline.create_pool).",
    )
    max_tries: int = Field(
        default=8,
        ge=2,
        description="Runs of a job cut short (its worker killed or stopped, a timeout) before it "
        "is dead-lettered; a run that hands the job back to the queue does not count.",
    )
    retry_wait_s: float = Field(
        default=600.0,
        gt=0,
        description="How long a job whose writes keep failing while PostgreSQL answers (a parent "
        "not written yet, a recurring serialization failure) is retried before it is "
        "dead-lettered; time PostgreSQL was unreachable does not count.",
    )
    reference_retry_delay_s: float = Field(
        default=0.5, ge=0, description="First delay before rerunning a job whose parent is missing."
    )
    transient_retry_delay_s: float = Field(
        default=1.0, ge=0, description="First delay before rerunning a job after a database error."
    )
    retry_max_delay_s: float = Field(
        default=30.0, gt=0, description="Longest delay before a job runs again (delays double)."
    )
    transient_retries: int = Field(
        default=4, ge=0, description="In-process retries of a batch on a transient database error."
    )
    transient_backoff_s: float = Field(default=0.05, ge=0, description="First backoff, doubled.")
    database_probe_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="While PostgreSQL is unreachable, how often the worker asks if it is back.",
    )
    db_connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Time to open a connection to PostgreSQL, at most."
    )
    poll_delay_s: float = Field(default=0.005, gt=0, description="arq poll delay when idle.")
    shutdown_wait_s: int = Field(
        default=15, ge=1, description="On SIGTERM, how long running jobs may take to finish."
    )
    audit_score_updates: bool = Field(
        default=False,
        description="Audit the pipeline's score-only node updates too (one audit_log row per "
        "score written); other changes, and every write made outside the pipeline, are always "
        "audited.",
    )
    principle_cache_size: int = Field(
        default=100_000, ge=0, description="Principle scores kept in the read-side cache."
    )
    log_level: str = Field(default="INFO", description="Log level of the pipeline's loggers.")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="Log lines as JSON or for a terminal; auto: console on a terminal, else JSON.",
    )
    log_jobs: bool = Field(
        default=False,
        description="Write arq's line per job start and end (INFO) too, not only failures.",
    )
    batch_claims: bool = Field(
        default=True,
        description="Under arq pipeline.WorkerSettings too, claim and finish jobs in batches "
        "(false: stock arq's one job at a time).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Port of the worker's /metrics and /ready endpoint; off when unset (0: any).",
    )
    queue_scan_limit: int = Field(
        default=10_000,
        ge=0,
        description="Jobs (the oldest first) whose function each scrape reads, for the queue's "
        "per-function gauges; those past it count under function unscanned.",
    )
    metrics_host: str = Field(
        # Every interface: Prometheus and probes reach a container's worker from outside it.
        default="0.0.0.0",  # noqa: S104
        description="Interface the metrics endpoint listens on.",
    )

    @field_validator("database_url", "read_database_url")
    @classmethod
    def _known_sslmode(cls, url: PostgresDsn | None) -> PostgresDsn | None:
        """A URL's ``sslmode=`` must be one the connections understand (``pipeline.postgres``)."""
        modes = parse_qs(url.query or "").get("sslmode", []) if url is not None else []
        if any(mode not in URL_SSL_MODES for mode in modes):
            raise ValueError("sslmode= must be disable, prefer, require or verify-full")
        return url


#: The ``sslmode=`` values a database URL may give: libpq's, which ``pipeline.postgres``
#: connects with (``allow`` and ``verify-ca`` too, though the setting documents only four).
URL_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


#: What reading the settings raises when the environment (or ``.env``) holds a bad value.
CONFIGURATION_ERRORS = (ValidationError, SettingsError)


def configuration_errors(error: ValidationError | SettingsError) -> list[str]:
    """One line per bad setting, ``PIPELINE_<NAME>: <the rule it breaks>``, never its value: a
    URL's password must not reach a terminal or a log collector."""
    if isinstance(error, SettingsError):
        return [_unparsed(error)]
    problems = error.errors(include_url=False, include_input=False, include_context=False)
    lines = [
        f"{_variable(problem['loc'])}: {problem['msg'].removeprefix('Value error, ')}"
        for problem in problems
    ]
    return list(dict.fromkeys(lines))


def report_configuration(error: ValidationError | SettingsError, out: TextIO | None = None) -> None:
    """Print :func:`configuration_errors`, each as ``pipeline: configuration error: …``."""
    for line in configuration_errors(error):
        print(f"pipeline: configuration error: {line}", file=out or sys.stderr)


def settings_or_exit() -> Settings:
    """:func:`get_settings`, or the report of what is wrong with them and exit status 2: for
    what runs at import under ``arq pipeline.WorkerSettings``, where nothing else reports it."""
    try:
        return get_settings()
    except CONFIGURATION_ERRORS as error:
        report_configuration(error)
        raise SystemExit(2) from None


def _variable(location: Sequence[int | str]) -> str:
    """The environment variable of a field (``[i]`` for an item of a list)."""
    field, *inside = location
    prefix = Settings.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper() + "".join(f"[{part}]" for part in inside)


def _unparsed(error: SettingsError) -> str:
    """pydantic-settings' own error, raised when a list or JSON setting is not valid JSON."""
    found = re.search(r'field "(\w+)"', str(error))
    name = _variable([found.group(1)]) if found else "a setting"
    return f'{name}: not valid JSON (lists are JSON, e.g. ["host:port"])'
