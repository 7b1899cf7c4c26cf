"""The package as installed, not the checkout, migrates: a wheel built from the sources, installed
(not editable) into a fresh virtual environment, runs ``pipeline migrate`` away from the
checkout and brings a new database to the head revision, from the migrations inside the wheel.
The wheel holds the package, its type marker and its migrations, and nothing else at top level.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from alembic.script import ScriptDirectory

from pipeline.cli.migrate import MIGRATIONS, alembic_config
from tests.conftest import ADMIN_URL, _admin, _db_url

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
#: What the Dockerfile copies to build the image: all a wheel is built from.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "pipeline")


def build_wheel(into: Path) -> Path:
    """A wheel of a copy of the sources (a build writes next to its sources, so not in the
    checkout)."""
    source = into / "source"
    source.mkdir()
    for name in SOURCES:
        if not (ROOT / name).exists():
            continue
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = into / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("pipeline_writes-*.whl")
    return wheel


def fresh_environment(path: Path) -> Path:
    """A new virtual environment that sees this one's installed distributions but not its
    editable ``pipeline``: a path listed in a ``.pth`` file is not a site directory, so the
    editable install's own ``.pth`` there is never run. Returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


@pytest.fixture
def new_database() -> Iterator[str]:
    """The name of a database that does not exist yet; dropped after the test."""
    name = f"pipeline_test_installed_{uuid.uuid4().hex[:10]}"
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def revision_of(url: str) -> str:
    conn = await asyncpg.connect(url)  # type: ignore[no-untyped-call]
    try:
        return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
    finally:
        await conn.close()


def test_an_installed_wheel_migrates_a_new_database(tmp_path: Path, new_database: str) -> None:
    wheel = build_wheel(tmp_path)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    inside = [p.relative_to(ROOT).as_posix() for p in MIGRATIONS.rglob("*") if p.is_file()]
    inside = [name for name in inside if "__pycache__" not in name]
    assert "pipeline/migrations/script.py.mako" in inside
    assert set(inside) <= shipped, sorted(set(inside) - shipped)
    assert "pipeline/py.typed" in shipped
    dist_info = f"pipeline_writes-{wheel.name.split('-')[1]}.dist-info"
    packages = {"pipeline"}
    assert {name.split("/")[0] for name in shipped} == packages | {dist_info}
    assert f"{dist_info}/licenses/LICENSE" in shipped

    python = fresh_environment(tmp_path / "env")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        timeout=300,
    )
    away = tmp_path / "elsewhere"  # no checkout, no alembic.ini, no .env here
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PIPELINE_DATABASE_URL"] = _db_url(new_database)
    where = subprocess.run(
        [python, "-c", "import pipeline.cli.migrate as m; print(m.MIGRATIONS)"],
        cwd=away,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "env"), where  # the installed copy's

    done = subprocess.run(
        [str(python.with_name("pipeline")), "migrate"],
        cwd=away,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    head = ScriptDirectory.from_config(alembic_config(ADMIN_URL)).get_current_head()
    assert head is not None
    assert asyncio.run(revision_of(_db_url(new_database))) == head
