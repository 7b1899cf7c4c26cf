"""The alerts fire when they must: ``promtool`` checks the rules and runs their unit tests
(deploy/prometheus/alerts.test.yml), every alert has a test case in which it fires and is silent
in the healthy one, every alert carries a severity and a runbook docs/operations.md has, and the
queue's gauges, which every target reports alike, are aggregated with max.

promtool comes with Debian's ``prometheus`` package, which ``./run test`` installs when it runs
as root; these tests fail, never skip, without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.ops import metrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "pipeline.json"
SEVERITIES = {"critical", "warning", "info"}
HOW_TO_INSTALL = (
    "promtool is not installed: it comes with Debian's prometheus package "
    "(`DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus`, "
    "which `./run test` does when run as root) or with Prometheus's release archive"
)
# Read from Redis or PostgreSQL at scrape time by every worker and by `pipeline exporter`: one
# queue and one store seen from every target, so an expression must take their max, never a sum.
QUEUE_SIDE = {
    "pipeline_queue_depth",
    "pipeline_queue_jobs",
    "pipeline_queue_oldest_due_age_seconds",
    "pipeline_dead_letters_unresolved",
    "pipeline_paused",
    "pipeline_workers_seen",
}
# Per target, not per queue: each target says whether its own last read answered.
PER_TARGET = {"pipeline_source_up"}
AGGREGATIONS = {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "quantile"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alert_rules()]


def unit_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = load_yaml(ALERT_TESTS)["tests"]
    return tests


def run_promtool(*args: str | Path, cwd: Path = PROMETHEUS) -> str:
    """Run promtool, failing the test with its whole output unless it exits 0 (and with how to
    install it if it is missing)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(HOW_TO_INSTALL)
    done = subprocess.run(
        [promtool, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def test_promtool_checks_the_rules() -> None:
    output = run_promtool("check", "rules", ALERTS)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_promtool_runs_the_alerts_unit_tests() -> None:
    output = run_promtool("test", "rules", ALERT_TESTS)
    assert "SUCCESS" in output


def test_promtool_checks_the_prometheus_config(tmp_path: Path) -> None:
    """The config as compose mounts it, its rule file at /etc/prometheus moved to a temp dir."""
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    output = run_promtool("check", "config", tmp_path / "prometheus.yml", cwd=tmp_path)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel's query, Grafana's interval variable replaced, as a recording rule."""
    queries = [re.sub(r"\$__\w+", "1m", expr) for expr in dashboard_exprs()]
    rules = [{"record": f"dashboard:query_{n}", "expr": q} for n, q in enumerate(queries)]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_promtool("check", "rules", path, cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_prometheus_scrapes_the_workers_and_the_exporter() -> None:
    jobs = {
        job["job_name"]: job for job in load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
    }
    assert set(jobs) == {"pipeline-worker", "pipeline-exporter"}
    (discovery,) = jobs["pipeline-worker"]["dns_sd_configs"]
    assert (discovery["names"], discovery["port"]) == (["worker"], 9100)
    (static,) = jobs["pipeline-exporter"]["static_configs"]
    assert static["targets"] == ["exporter:9100"]
    expressions = " ".join(rule["expr"] for rule in alert_rules())
    for job in jobs:
        assert f'up{{job="{job}"}}' in expressions  # each scrape job has an alert on its targets


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    names = alert_names()
    assert len(names) == len(set(names))
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"] == f"docs/operations.md#{name.lower()}"
        assert all(annotations[key].strip() for key in ("summary", "description")), name


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_operations_page_has_a_runbook_for_each_alert_and_no_other() -> None:
    readme = (ROOT / "docs" / "operations.md").read_text()
    section = readme.split("\n### Runbooks\n", 1)[1].split("\n## ", 1)[0]
    runbooks = re.findall(r"^#### (.+)$", section, flags=re.MULTILINE)
    assert sorted(runbooks) == sorted(alert_names())
    anchors = [github_anchor(h) for h in re.findall(r"^#+ (.+)$", readme, flags=re.MULTILINE)]
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchors.count(anchor) == 1, anchor  # a second one would be `…-1` on GitHub
    for body in re.split(r"^#### .+$", section, flags=re.MULTILINE)[1:]:
        assert re.search(r"^1\. .*^2\. .*^3\. ", body, flags=re.MULTILINE | re.DOTALL)


def test_every_alert_fires_in_some_case_and_none_in_the_healthy_one() -> None:
    names = set(alert_names())
    firing = {
        check["alertname"]
        for case in unit_tests()
        for check in case["alert_rule_test"]
        if check.get("exp_alerts")
    }
    assert firing == names  # and no test of an alert that no longer exists
    (healthy,) = (case for case in unit_tests() if case["name"].startswith("healthy"))
    checks = healthy["alert_rule_test"]
    assert sorted(check["alertname"] for check in checks) == sorted(names)
    assert {check["exp_alerts"] == [] for check in checks} == {True}
    assert len({check["eval_time"] for check in checks}) == 1
    # Late enough for every `for` but a day's, which its own case covers.
    waits = [duration_seconds(rule.get("for", "0s")) for rule in alert_rules()]
    assert duration_seconds(checks[0]["eval_time"]) > max(w for w in waits if w < 86400)


def duration_seconds(text: str) -> int:
    """Seconds in a Prometheus duration such as ``1h30m`` or ``15m``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(int(n) * units[u] for n, u in parts)


def enclosing_aggregations(expr: str, position: int) -> list[str]:
    """The aggregation operators around ``position`` in ``expr``, innermost first (functions
    such as ``delta`` and plain parentheses are looked through)."""
    found = []
    depth = 0
    for index in range(position - 1, -1, -1):
        if expr[index] == ")":
            depth += 1
        elif expr[index] == "(" and depth:
            depth -= 1
        elif expr[index] == "(":
            head = re.search(r"(\w+)\s*(?:(?:by|without)\s*\([^()]*\)\s*)?$", expr[:index])
            if head and head.group(1) in AGGREGATIONS:
                found.append(head.group(1))
    return found


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_the_parser_of_aggregations() -> None:
    expr = "sum(max by (function, state) (delta(pipeline_queue_jobs[5m]))) + pipeline_paused"
    assert enclosing_aggregations(expr, expr.index("pipeline_queue_jobs")) == ["max", "sum"]
    assert enclosing_aggregations(expr, expr.index("pipeline_paused")) == []


def test_queue_side_gauges_are_aggregated_with_max_across_targets() -> None:
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    seen = set()
    for expr in exprs:
        for name in QUEUE_SIDE:
            for match in re.finditer(rf"\b{name}\b(?![\w:])", expr):
                seen.add(name)
                assert enclosing_aggregations(expr, match.start())[:1] == ["max"], expr
    assert seen == QUEUE_SIDE  # every one of them is read somewhere


def test_the_queue_side_metrics_the_alerts_read_are_exported() -> None:
    """The names this file and alerts.yml rely on, as the worker and the exporter export them."""
    missing = (QUEUE_SIDE | PER_TARGET) - metrics.metric_names()
    assert not missing, f"alerts read metrics that pipeline.ops.metrics does not export: {missing}"
