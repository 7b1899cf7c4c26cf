"""``pipeline bench`` works: a few scenarios at tiny sizes, real worker processes, a JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_bench_quick_runs_and_reports(settings: Settings, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PIPELINE_DATABASE_URL": str(settings.database_url),
        "PIPELINE_REDIS_URL": str(settings.redis_url),
    }
    only = ["1 naive", "2 arq floor", "3 pipeline, 1 write/job", "unnest", "7 latency"]
    command = [sys.executable, "-m", "pipeline", "bench", "--quick", "--out", str(tmp_path)]
    command += [arg for name in only for arg in ("--only", name)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pipeline bench" in done.stdout

    [report] = [json.loads(p.read_text()) for p in tmp_path.glob("bench-*.json")]
    results = {r["name"]: r for r in report["results"]}
    assert len(results) == 7  # "3 pipeline, 1 write/job" also matches its two variants
    for name, result in results.items():
        assert result["rows"] > 0 and result["rows_per_s"] > 0, name
    assert results["1 naive baseline"]["cpu_pct"] > 0
    assert results["3 pipeline, 1 write/job"]["peak_rss_mb"] > 0
    latency = results["7 latency at 500 jobs/s"]["extra"]
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"]
