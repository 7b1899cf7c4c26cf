"""A PostgreSQL server of the test's own, which a fault test may stop, start and kill.

The shared server on 5432 must never be stopped, so outage tests run ``initdb`` into a temporary
directory and start a cluster on a free port (as the ``postgres`` OS user when the tests run as
root: PostgreSQL refuses to run as root). Durability settings are off: nothing here outlives the
test session.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pipeline.cli.migrate import upgrade

BIN = Path(os.environ.get("PIPELINE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
CONFIG = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{root}'
max_connections = 200
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
"""


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


class PrivatePostgres:
    """One throwaway cluster: :meth:`start`, :meth:`stop`, :meth:`kill`, :meth:`remove`.

    ``config`` is appended to its postgresql.conf; ``hba``, if given, is its pg_hba.conf.
    """

    def __init__(self, config: str = "", hba: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run([str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust"])
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(CONFIG.format(port=self.port, root=self.root) + config)
        if hba is not None:  # replaces the cluster's client authentication rules
            (self.data / "pg_hba.conf").write_text(hba)

    def _run(self, command: list[str]) -> None:
        subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=120)

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this cluster."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the cluster and wait until it accepts connections."""
        log = str(self.root / "server.log")
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-l", log, "-w", "-t", "60", "start"])

    def stop(self) -> None:
        """Stop it the way an operator does (``-m fast``: sessions are ended, then it exits)."""
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends exit once they notice)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def create_migrated(self, database: str) -> str:
        """Create ``database`` with the pipeline's schema; its URL."""
        url = self.url(database)
        upgrade(url, configure_logging=False)
        return url

    def remove(self) -> None:
        """Stop the cluster if it runs, and delete its files."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres(
                    [str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
                ),
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
