"""The deployment files agree with the code: the compose file keeps its healthchecks, Redis's
append-only file and the migration, Prometheus scrapes the port the workers serve, and every
metric a dashboard or an alert reads is one the worker exports."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.ops import metrics
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# What Prometheus itself provides: scrape health.
BUILT_IN = {"up"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")
    return loaded


def dockerfile() -> dict[str, list[str]]:
    """The Dockerfile's instructions, each one's arguments as written (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            found.setdefault(instruction.upper(), []).append(rest.strip())
    return found


def argv(service: dict[str, Any]) -> list[str]:
    """What a compose service built from the Dockerfile runs: its entrypoint (the image's,
    unless overridden) followed by its command (the image's CMD, unless given)."""
    image = dockerfile()
    entrypoint = service.get("entrypoint", json.loads(image["ENTRYPOINT"][-1]))
    command = service.get("command", json.loads(image["CMD"][-1]))
    return [*entrypoint, *command]


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels, keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\boffset\s+-?[0-9a-z]+", "", expr)  # `offset 15m`
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables such as $__rate_interval
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [target["expr"] for target in panel.get("targets", [])]
    return exprs


def alert_exprs() -> list[str]:
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_metric_name_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(pipeline_batch_rows_bucket{job="x"}'
        "[$__rate_interval]))) / on (instance) time() - max(pipeline_queue_depth[5m:1m]) "
        "and up == 0 or max by (reason) (pipeline_paused offset 15m) * 0"
    )
    assert metric_names_in(expr) == {
        "pipeline_batch_rows_bucket",
        "pipeline_queue_depth",
        "up",
        "pipeline_paused",
    }


def test_every_metric_a_dashboard_or_alert_reads_is_exported() -> None:
    exported = metrics.metric_names()
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) >= 10
    read = set().union(*(metric_names_in(e) for e in exprs))
    assert read - exported - BUILT_IN == set()
    assert all(metric_names_in(e) for e in exprs)  # each expression reads something


def test_every_metric_is_prefixed_and_on_the_dashboard() -> None:
    ours = {n for n in metrics.metric_names() if not n.startswith("process_")}
    assert all(n.startswith("pipeline_") for n in ours)
    read = set().union(*(metric_names_in(e) for e in dashboard_exprs()))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in read}
    assert {re.sub(r"_(bucket|sum|count)$", "", n) for n in ours} <= families


def test_the_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "pipeline.json").read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in (
        "throughput by kind",
        "jobs by outcome",
        "batch size",
        "flush latency",
        "queue depth",
        "dead letters",
        "in flight",
        "last flush age",
    ):
        assert topic in titles
    assert any("histogram_quantile" in e for e in dashboard_exprs())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uids = {source["uid"] for source in datasource["datasources"]}
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} <= uids


def test_compose_keeps_its_healthchecks_aof_and_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert argv(services["migrate"])[:2] == ["pipeline", "migrate"]
    worker = services["worker"]
    assert worker["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert "/ready" in " ".join(worker["healthcheck"]["test"])


def test_workers_scale_and_serve_the_port_prometheus_scrapes(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "ports" not in worker  # a fixed host port would stop a second replica
    port = int(worker["environment"]["PIPELINE_METRICS_PORT"])
    settings = Settings(metrics_port=worker["environment"]["PIPELINE_METRICS_PORT"])
    assert settings.metrics_port == port
    assert str(port) in worker["expose"]
    assert f":{port}/ready" in " ".join(worker["healthcheck"]["test"])

    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    job = jobs["pipeline-worker"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and discovery["port"] == port
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_the_monitoring_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    for name in ("postgres", "redis", "migrate", "worker"):
        assert "profiles" not in services[name]  # the default stack needs no profile

    mounts = {m.split(":")[0]: m.split(":")[1] for m in services["prometheus"]["volumes"]}
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert (
        mounts["./deploy/prometheus/alerts.yml"]
        in load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["rule_files"]
    )

    grafana = {m.split(":")[0]: m.split(":")[1] for m in services["grafana"]["volumes"]}
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "pipeline.yml")
    (provider,) = providers["providers"]
    assert grafana["./deploy/grafana/dashboards"] == provider["options"]["path"]
    for mount in grafana:
        if mount.startswith("./"):
            assert (ROOT / mount).exists()


ARQ_COMMAND = ["arq", "pipeline.WorkerSettings", "--custom-log-dict", "pipeline.logs.ARQ_LOGGING"]


def test_every_deployment_runs_arqs_command_with_the_log_dict(compose: dict[str, Any]) -> None:
    """The deployment command users were promised; the log dict makes its first lines JSON."""
    assert argv(compose["services"]["worker"]) == ARQ_COMMAND
    procfile = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    assert procfile["worker"].split() == ARQ_COMMAND
    assert " ".join(ARQ_COMMAND) in (ROOT / "docs" / "operations.md").read_text()
    module, _, name = ARQ_COMMAND[-1].rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), name), dict)


def test_the_image_installs_the_package_and_runs_the_pipeline_command(
    compose: dict[str, Any],
) -> None:
    image = dockerfile()
    (install,) = [run for run in image["RUN"] if "pip install" in run]
    assert "pip install --no-cache-dir ." in install and " -e" not in install
    assert json.loads(image["ENTRYPOINT"][-1]) == ["pipeline"]
    assert json.loads(image["CMD"][-1]) == ["worker"]
    assert image["USER"][-1] == "nobody"
    (env,) = image["ENV"]
    name, _, port = env.partition("=")
    assert name == "PIPELINE_METRICS_PORT" and image["EXPOSE"] == [port]
    assert compose["services"]["worker"]["environment"]["PIPELINE_METRICS_PORT"] == port
    (healthcheck,) = image["HEALTHCHECK"]
    probe = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert probe[:2] == ["python", "-c"] and "/ready" in probe[2] and "urlopen" in probe[2]
    assert "PIPELINE_METRICS_PORT" in probe[2]  # the port the worker listens on, whatever it is


def test_the_image_copies_what_it_needs_and_no_tests() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "tests", "bench-results"} <= ignored
    copied = [part for copy in dockerfile()["COPY"] for part in copy.split()[:-1]]
    assert set(copied) == {"pyproject.toml", "README.md", "LICENSE", "pipeline"}
    for source in copied:
        assert (ROOT / source).exists() and source not in ignored
    migrations = ROOT / "pipeline" / "migrations"
    assert (migrations / "env.py").is_file() and (migrations / "script.py.mako").is_file()
    assert not (ROOT / "migrations").exists()  # inside the package, which the image installs


def test_compose_commands_are_commands_of_the_cli(compose: dict[str, Any]) -> None:
    """Every service run through the image's ``pipeline`` entrypoint names a real sub-command
    with options it accepts."""
    from pipeline.cli import parser

    run_by_pipeline = {
        name: argv(service)
        for name, service in compose["services"].items()
        if "build" in service and argv(service)[0] == "pipeline"
    }
    assert set(run_by_pipeline) == {"migrate", "exporter"}
    assert run_by_pipeline["migrate"] == ["pipeline", "migrate", "--no-create"]
    assert run_by_pipeline["exporter"] == ["pipeline", "exporter"]
    for command in run_by_pipeline.values():
        parser().parse_args(command[1:])  # exits (SystemExit) on an unknown command or option
    assert compose["services"]["migrate"]["healthcheck"] == {"disable": True}  # serves no /ready


def test_workers_and_the_exporter_restart_and_report_ready(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker, exporter = services["worker"], services["exporter"]
    assert worker["restart"] == exporter["restart"] == "unless-stopped"
    assert exporter["environment"] == worker["environment"]
    port = exporter["environment"]["PIPELINE_METRICS_PORT"]
    assert exporter["expose"] == [port] and "ports" not in exporter
    assert f"http://127.0.0.1:{port}/ready" in " ".join(exporter["healthcheck"]["test"])
    assert exporter["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    (static,) = jobs["pipeline-exporter"]["static_configs"]
    assert static["targets"] == [f"exporter:{port}"]
