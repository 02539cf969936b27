"""End to end with long-term metrics (issue 20 §1): Prometheus remote_writes to a real
VictoriaMetrics (Debian's `victoria-metrics`, single node) and the agent, `gpu-watchdog ask`
and the Grafana dashboards' queries read from VictoriaMetrics' Prometheus-compatible API.

Same pipeline as test_pipeline.py (tests/harness/stack.py, `victoria=True`), same faults, same
checks on the findings: the evidence that Prometheus gave there, VictoriaMetrics gives here.
VictoriaMetrics' own request counters prove the agent asked it, not Prometheus.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent_webhook.config import PREFIX_ENV
from agent_webhook.investigation.tools import alert_expression
from agent_webhook.model import Alert
from tests.e2e.conftest import record
from tests.e2e.test_pipeline import FLOOR_SECONDS, _check_finding, _check_resolved
from tests.grafana.dashboard_queries import dashboards, panel_queries, query_variables, regex_value, substitute
from tests.harness.processes import ProcessManager, http_get, wait_until
from tests.harness.promstack import MissingBinary, PrometheusServer
from tests.harness.slurm import SlurmUnavailable
from tests.harness.stack import BIN, FAULTS, Stack, clear_until_resolved, inject_until_finding, start_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(session_procs: ProcessManager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        running = start_stack(session_procs, tmp_path_factory.mktemp("e2e-vm"), victoria=True)
    except (SlurmUnavailable, MissingBinary) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield running
    finally:
        running.stop()


def _vm_queries(stack: Stack) -> float:
    """Query API requests VictoriaMetrics has served (its own /metrics)."""
    assert stack.victoria is not None
    status, body = http_get(f"{stack.victoria.url}/metrics", timeout=10)
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("vm_http_requests_total{") and re.search(r'path="/api/v1/query(_range)?"', line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_agent_reads_from_victoria_metrics(stack: Stack) -> None:
    assert stack.victoria is not None
    assert stack.metrics_url == stack.victoria.url != stack.prometheus.url
    # The same series through both APIs: what Prometheus scraped arrived by remote_write.
    for expr in ('up{job="gpu"}', 'slurm_up{job="slurm"}', "count(nvidia_gpu_up)"):
        prom = {tuple(sorted(r["metric"].items())) for r in stack.prometheus.query(expr)}
        vm = {tuple(sorted(r["metric"].items())) for r in stack.victoria.query(expr)}
        assert prom and prom == vm, (expr, prom, vm)


@pytest.mark.parametrize("key", ["dbe", "drain"])
def test_fault_becomes_the_same_finding_from_victoria_metrics(stack: Stack, key: str) -> None:
    assert stack.victoria is not None
    fault = FAULTS[key]
    before = _vm_queries(stack)
    cleared = False
    try:
        finding, seconds = inject_until_finding(stack, fault)
        record(f"{fault.name} (VictoriaMetrics)", seconds)
        # The checks of test_pipeline.py: same triage rule, cause, action; no degraded source;
        # every piece of evidence answered; one notification, one finding, one sink post.
        _check_finding(stack, fault, finding)
        assert seconds < FLOOR_SECONDS, f"{fault.name}: {seconds:.1f} s from injection to finding"
        assert _vm_queries(stack) > before, "the agent's evidence queries did not reach VictoriaMetrics"
        # The alert's own expression (from its generatorURL) gives VictoriaMetrics the same
        # series as Prometheus while the fault lasts.
        labels = {"alertname": fault.alertname, "node": stack.node, **fault.labels}
        firing = [a for a in stack.prometheus.alerts() if all(a["labels"].get(k) == v for k, v in labels.items())]
        assert firing, labels
        expr = alert_expression(
            Alert(
                fingerprint="x",
                status="firing",
                labels=firing[0]["labels"],
                annotations={},
                starts_at=firing[0]["activeAt"],
                ends_at=None,
                generator_url=_generator_url(stack, fault.alertname),
                receiver="",
                group_key="",
                external_url="",
            )
        )
        assert expr, "the alert carries its expression"
        prom_series = {tuple(sorted(r["metric"].items())) for r in stack.prometheus.query(expr)}
        vm_series = {tuple(sorted(r["metric"].items())) for r in stack.victoria.query(expr)}
        assert prom_series and prom_series == vm_series, (expr, prom_series, vm_series)
        cleared = True
        resolved = clear_until_resolved(stack, fault, finding["id"])
        _check_resolved(stack, fault, finding["id"], resolved)
    finally:
        if not cleared:
            fault.clear(stack)


def _generator_url(stack: Stack, alertname: str) -> str:
    for alert in stack.alertmanager.alerts():
        if alert["labels"].get("alertname") == alertname:
            return str(alert.get("generatorURL") or "")
    return ""


def test_ask_answers_from_victoria_metrics(stack: Stack) -> None:
    gpu = 4
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_") or k == PREFIX_ENV}
    env["GPU_WATCHDOG_CONFIG"] = str(stack.workdir / "agent.yml")
    before = _vm_queries(stack)
    try:
        stack.inject(gpu, "throttle", "thermal")
        assert stack.victoria is not None
        wait_until(
            lambda: stack.firing("GPUThermalThrottling", node=stack.node, gpu=str(gpu)),
            120,
            what="GPUThermalThrottling firing",
        )
        result = subprocess.run(
            [str(BIN / "gpu-watchdog"), "ask", f"what is wrong with gpu {gpu}?"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
    finally:
        stack.clear(gpu)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"node {stack.node}: the only node with GPU {gpu}" in out, out
    assert "thermal throttling" in out, out
    assert "Degraded" not in out, out
    assert _vm_queries(stack) > before


def test_dashboard_queries_answer_alike(stack: Stack) -> None:
    """Grafana's data source pointed at VictoriaMetrics: every dashboard query (variables resolved
    through /api/v1/series as Grafana does) that has data in Prometheus has it in VictoriaMetrics."""
    assert stack.victoria is not None
    since = time.time() - 120
    base = {"__rate_interval": "10s", "__interval": "2s", "__range": "60s"}
    compared = 0
    for name, dashboard in dashboards().items():
        values = dict(base)
        for var in query_variables(dashboard):
            selector = substitute(var.selector, values)
            prom = sorted({s[var.label] for s in stack.prometheus.series(selector, since) if var.label in s})
            vm = sorted({s[var.label] for s in stack.victoria.series(selector, since) if var.label in s})
            assert prom == vm, (name, var.name, prom, vm)
            values[var.name] = regex_value(prom[0]) if prom else ".*"
        for query in (q for q in panel_queries() if q.dashboard == name):
            expr = substitute(query.expr, values)
            # Both asked about the same moment, a few seconds back: VictoriaMetrics hides its newest
            # second (-search.latencyOffset) and receives samples a moment after Prometheus
            # (remote write), so an alert that began firing just now is in one and not yet the other.
            end = time.time() - 3

            def ask(server: PrometheusServer, expr: str = expr, end: float = end, instant: bool = query.instant) -> Any:
                return server.query(expr, at=end) if instant else server.query_range(expr, end - 20, end, 2)

            if ask(stack.prometheus):
                compared += 1
                deadline = time.monotonic() + 10
                while not (vm_result := ask(stack.victoria)) and time.monotonic() < deadline:
                    time.sleep(0.5)
                assert vm_result, f"no data from VictoriaMetrics for {query.key}: {expr}"
    assert compared >= 10, compared
