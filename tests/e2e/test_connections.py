"""TLS to PostgreSQL is a setting, and every connection runs in UTC, against a server of the
test's own: ``ssl = on`` with a throwaway certificate authority and certificate made here, TLS
required for every TCP connection, and a default time zone far from UTC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.cli.migrate import upgrade
from pipeline.postgres import create_engine
from pipeline.settings import Settings
from tests.e2e.private_postgres import PrivatePostgres

ZONE = "Pacific/Chatham"  # UTC+12:45 or +13:45: no offset to mistake for UTC
HBA = """
local all all trust
hostssl all all 127.0.0.1/32 trust
hostnossl all all 127.0.0.1/32 reject
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _authority(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt",
        cwd=directory,
    )  # fmt: skip


def _certificates(directory: Path) -> None:
    """ca.crt, and server.crt/server.key signed by it for 127.0.0.1 and localhost; other.crt,
    an authority that signed nothing."""
    _authority(directory, "ca")
    _authority(directory, "other")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr", cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.key").chmod(0o600)
    if os.geteuid() == 0:
        for name in ("server.key", "server.crt"):
            shutil.chown(directory / name, "postgres", "postgres")


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[tuple[PrivatePostgres, Path]]:
    """The cluster, started, and the directory of the certificates (outside pytest's own
    temporary directory, which the postgres user may not enter)."""
    certs = Path(tempfile.mkdtemp(prefix="pipeline-certs-"))
    certs.chmod(0o755)
    _certificates(certs)
    config = (
        f"ssl = on\nssl_cert_file = '{certs / 'server.crt'}'\n"
        f"ssl_key_file = '{certs / 'server.key'}'\ntimezone = '{ZONE}'\n"
    )
    pg = PrivatePostgres(config=config, hba=HBA)
    try:
        pg.start()
        yield pg, certs
    finally:
        pg.remove()
        shutil.rmtree(certs, ignore_errors=True)


@pytest.fixture(scope="module")
def url(tls_pg: tuple[PrivatePostgres, Path]) -> str:
    """A database on the cluster, migrated through TLS (the migration's own connections too)."""
    pg, _ = tls_pg
    database_url = pg.url("tls")
    previous = os.environ.get("PIPELINE_DB_SSL_MODE")
    os.environ["PIPELINE_DB_SSL_MODE"] = "require"
    try:
        upgrade(database_url, configure_logging=False)
    finally:
        if previous is None:
            del os.environ["PIPELINE_DB_SSL_MODE"]
        else:
            os.environ["PIPELINE_DB_SSL_MODE"] = previous
    return database_url


async def _session(engine: AsyncEngine) -> tuple[bool, str, str]:
    try:
        async with engine.connect() as conn:
            encrypted = await conn.scalar(
                text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            )
            zone = await conn.scalar(text("SHOW TimeZone"))
            now = await conn.scalar(text("SELECT now()::text"))
        return bool(encrypted), str(zone), str(now)
    finally:
        await engine.dispose()


@pytest.fixture
async def plain_zone(url: str) -> AsyncIterator[str]:
    """The server's own zone, as a connection without the pipeline's settings sees it."""
    conn = await asyncpg.connect(url.replace("+asyncpg", ""), ssl="require")  # type: ignore[no-untyped-call]
    try:
        yield str(await conn.fetchval("SHOW TimeZone"))
    finally:
        await conn.close()


async def test_require_encrypts_and_every_engine_runs_in_utc(url: str, plain_zone: str) -> None:
    assert plain_zone == ZONE  # the server's default is not UTC, so UTC below is the pipeline's
    settings = Settings(database_url=url, read_database_url=url, db_ssl_mode="require")
    for engine in (create_engine(settings), create_engine(settings, read=True)):
        encrypted, zone, now = await _session(engine)
        assert encrypted and zone == "UTC" and now.endswith("+00")


async def test_disable_is_refused_by_a_server_that_requires_tls(url: str) -> None:
    engine = create_engine(Settings(database_url=url, db_ssl_mode="disable"))
    with pytest.raises(Exception, match=r"no encryption|rejects connection"):
        await _session(engine)


async def test_verify_full_accepts_the_servers_authority_only(
    url: str, tls_pg: tuple[PrivatePostgres, Path]
) -> None:
    _, certs = tls_pg
    for host in ("127.0.0.1", "localhost"):
        settings = Settings(
            database_url=url.replace("127.0.0.1", host),
            db_ssl_mode="verify-full",
            db_ssl_root_cert=certs / "ca.crt",
        )
        assert (await _session(create_engine(settings)))[0]
    wrong = Settings(
        database_url=url, db_ssl_mode="verify-full", db_ssl_root_cert=certs / "other.crt"
    )
    with pytest.raises(Exception, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        await _session(create_engine(wrong))


async def test_a_urls_sslmode_works_and_a_contradiction_is_refused(
    url: str, tls_pg: tuple[PrivatePostgres, Path]
) -> None:
    _, certs = tls_pg
    assert (await _session(create_engine(Settings(database_url=url + "?sslmode=require"))))[0]
    verified = f"{url}?sslmode=verify-full&sslrootcert={certs / 'ca.crt'}"
    assert (await _session(create_engine(Settings(database_url=verified))))[0]
    with pytest.raises(ValueError, match="sslmode=disable but PIPELINE_DB_SSL_MODE is require"):
        create_engine(Settings(database_url=url + "?sslmode=disable", db_ssl_mode="require"))
    with pytest.raises(ValueError, match="PIPELINE_DB_SSL_ROOT_CERT: no such file"):
        create_engine(
            Settings(
                database_url=url,
                db_ssl_mode="verify-full",
                db_ssl_root_cert=certs / "missing.crt",
            )
        )


async def test_the_migration_ran_through_tls(url: str) -> None:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""), ssl="require")  # type: ignore[no-untyped-call]
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0009"
    finally:
        await conn.close()
