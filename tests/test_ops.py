"""Ops assets: the Prometheus alert rules and the Grafana dashboard work on real metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import SERVICE_ENV
from tests.redis_server import free_port
from tests.support import ROOT, stop_process, wait_for
from worker.deadman import arm_deadman, disarm

ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "ops" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "cancel-worker.json"
METRIC_RE = re.compile(r"\bcancel_worker_[a-z_]+")
SWITCH = "ops-metrics-scrape"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is needed: apt-get install prometheus (make test installs it)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_alert_rules_are_valid() -> None:
    """`promtool check rules` accepts the alert rules."""
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_alerts_fire_when_they_should() -> None:
    """`promtool test rules`: each alert fires on the series that should raise it (and its
    text renders, drain time included), and stays quiet on a healthy series."""
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def named_metrics() -> set[str]:
    """Every metric the alert rules and the dashboard query."""
    exprs = METRIC_RE.findall(ALERTS.read_text())
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            exprs += METRIC_RE.findall(target["expr"])
    return set(exprs)


@pytest.fixture
def metrics_url(workers: Path, log_dir: Path) -> Iterator[str]:
    """`cancel-worker metrics` as the Procfile runs it: REDIS_URL only, no key or secret."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COINSWITCH_", "CANCEL_"))}
    env["REDIS_URL"] = SERVICE_ENV["REDIS_URL"]
    with open(log_dir / "ops-metrics.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: _ok(url), 30, "the metrics endpoint")
        yield url
    finally:
        stop_process(proc)


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def test_every_metric_the_assets_name_is_served(metrics_url: str) -> None:
    """Each metric the alert rules and the dashboard use appears in a live scrape, with
    the workers' accounts, queues and consumers in it; an armed switch that never fired
    has its fired counter at 0 (so the alert's increase() sees its first firing)."""

    def scrape() -> str | None:
        text = requests.get(metrics_url, timeout=5).text
        return text if 'cancel_worker_consumers{queue="cancels"} 1.0' in text else None

    arm_deadman(SWITCH, 3600, ["ZZZUSDT"])  # a symbol nobody trades; disarmed below
    try:
        text = wait_for(scrape, 30, "the worker's heartbeat in the metrics")
    finally:
        disarm(SWITCH)
    assert f'cancel_worker_deadman_triggered_total{{name="{SWITCH}"}} 0.0' in text
    served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    missing = named_metrics() - served
    assert not missing, sorted(missing)
    assert 'cancel_worker_budget_limit{account="alpha",bucket="cancel"} 10.0' in text
    assert "cancel_worker_redis_up 1.0" in text


def test_metrics_say_when_redis_is_down() -> None:
    """A scrape while Redis is unreachable reports cancel_worker_redis_up 0 (for the
    CancelWorkerRedisDown alert) instead of failing."""
    from worker.metrics import FleetCollector
    from worker.services import Services
    from worker.settings import Settings

    dead = Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    families = list(FleetCollector(Services(dead)).collect())
    assert [(f.name, [s.value for s in f.samples]) for f in families] == [
        ("cancel_worker_redis_up", [0.0])
    ]
