"""The harness itself: real Prometheus evaluates a rule and real Alertmanager receives the alert."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.harness.processes import ProcessManager, wait_until
from tests.harness.promstack import AlertmanagerServer, PrometheusServer


def test_prometheus_rule_fires_into_alertmanager(
    tmp_path: Path,
    procs: ProcessManager,
    prometheus_factory: Callable[..., PrometheusServer],
    alertmanager_factory: Callable[..., AlertmanagerServer],
) -> None:
    am = alertmanager_factory({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]})
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n- name: harness\n  rules:\n  - alert: HarnessAlwaysFiring\n    expr: vector(1)\n"
        "    labels: {severity: info}\n"
    )
    prom = prometheus_factory(
        scrape_targets={"alertmanager": [am.url.removeprefix("http://")]},
        rule_files=[rules],
        alertmanager_urls=[am.url],
    )
    prom.wait_for('up{job="alertmanager"} == 1')
    prom.wait_for('ALERTS{alertname="HarnessAlwaysFiring", alertstate="firing"}')
    wait_until(
        lambda: any(a["labels"]["alertname"] == "HarnessAlwaysFiring" for a in am.alerts()), 30, what="alert in AM"
    )
    assert prom.process.alive() and am.process.alive()


def test_process_manager_stops_by_pid(procs: ProcessManager) -> None:
    proc = procs.start("sleeper", ["sleep", "300"])
    assert proc.alive()
    proc.stop(timeout=2)
    assert not proc.alive()
    assert "sleeper" in procs.log_sections()[0][0]
