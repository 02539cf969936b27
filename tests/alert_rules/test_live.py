"""The rules and the Alertmanager config in the real daemons (Debian's prometheus and
prometheus-alertmanager) on loopback.

The exporters are stood in for at the wire: small HTTP servers serving fixed exposition text
with the metric names of the GPU and Slurm exporters, scraped with the same job names and the
`node` target label the suite's scrape configs set.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.alert_rules.ruleset import ALERTMANAGER_CONFIG, load_rules, rule_files
from tests.harness.processes import LOOPBACK, free_port, wait_until
from tests.harness.promstack import AlertmanagerServer, PrometheusServer, wait_seconds

pytestmark = pytest.mark.slow

# GPU 1 is /dev/nvidia3 (the driver's probe order differs from PCI order): Slurm's IDX 3.
GPU_METRICS = """\
# HELP nvidia_gpu_info GPU identity.
# TYPE nvidia_gpu_info gauge
nvidia_gpu_info{gpu="0",uuid="GPU-a1-0",minor_number="0"} 1
nvidia_gpu_info{gpu="1",uuid="GPU-a1-1",minor_number="3"} 1
# HELP nvidia_gpu_up 1 if the GPU is readable, 0 if lost.
# TYPE nvidia_gpu_up gauge
nvidia_gpu_up{gpu="0",uuid="GPU-a1-0"} 0
nvidia_gpu_up{gpu="1",uuid="GPU-a1-1"} 1
# HELP nvidia_gpu_utilization_ratio GPU utilization.
# TYPE nvidia_gpu_utilization_ratio gauge
nvidia_gpu_utilization_ratio{gpu="1",uuid="GPU-a1-1"} 0
# HELP nvidia_gpu_temperature_celsius GPU temperature.
# TYPE nvidia_gpu_temperature_celsius gauge
nvidia_gpu_temperature_celsius{gpu="1",uuid="GPU-a1-1"} 93
"""

SLURM_METRICS = """\
# HELP slurm_up 1 if the last poll of slurmctld succeeded.
# TYPE slurm_up gauge
slurm_up 0
# HELP slurm_job_gpu_info GPUs held by jobs.
# TYPE slurm_job_gpu_info gauge
slurm_job_gpu_info{job_id="7",user="alice",account="ml",node="gpu-a1",gpu="3",minor_number="3",gpu_type="h100"} 1
# HELP slurm_node_state Node states.
# TYPE slurm_node_state gauge
slurm_node_state{node="gpu-a1",state="mixed"} 1
slurm_node_state{node="gpu-m1",state="drained"} 1
# HELP slurm_node_state_flag State flags of the node.
# TYPE slurm_node_state_flag gauge
slurm_node_state_flag{node="gpu-m1",flag="drain"} 1
# HELP slurm_node_reason_info Reasons of down and drained nodes.
# TYPE slurm_node_reason_info gauge
slurm_node_reason_info{node="gpu-m1",state="drained",reason="maint: BIOS update"} 1
"""

# A second Slurm exporter whose polls succeed: only its assignments may drive GPUIdleWhileAllocated
# (the first one serves job 7 from its last good poll while slurm_up is 0: stale).
SLURM_UP_METRICS = """\
# HELP slurm_up 1 if the last poll of slurmctld succeeded.
# TYPE slurm_up gauge
slurm_up 1
# HELP slurm_job_gpu_info GPUs held by jobs.
# TYPE slurm_job_gpu_info gauge
slurm_job_gpu_info{job_id="8",user="bob",account="ml",node="gpu-a1",gpu="3",minor_number="3",gpu_type="h100"} 1
"""


class _Server:
    """A loopback HTTP server in a thread; `handle(method, path, headers, body)` answers."""

    def __init__(self, handle: Callable[[str, str, dict[str, str], bytes], tuple[int, str, bytes]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, ctype, payload = handle(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[..., tuple[int, str, bytes]]], _Server]]:
    servers: list[_Server] = []

    def start(handle: Callable[..., tuple[int, str, bytes]]) -> _Server:
        server = _Server(handle)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def static_metrics(text: str) -> Callable[..., tuple[int, str, bytes]]:
    def handle(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if path.startswith("/metrics"):
            return 200, "text/plain; version=0.0.4", text.encode()
        return 404, "text/plain", b"not found\n"

    return handle


def test_prometheus_loads_every_rule_group_and_evaluates_it_healthy(
    prometheus_factory: Callable[..., PrometheusServer], serve: Callable[..., _Server]
) -> None:
    gpu = serve(static_metrics(GPU_METRICS))
    slurm = serve(static_metrics(SLURM_METRICS))
    slurm_ok = serve(static_metrics(SLURM_UP_METRICS))
    prom = prometheus_factory(
        rule_files=rule_files(),
        extra_scrape_configs=[
            # The suite's scrape configs set `node` per GPU-exporter target (docs/architecture.md).
            {
                "job_name": "gpu",
                "static_configs": [{"targets": [f"{LOOPBACK}:{gpu.port}"], "labels": {"node": "gpu-a1"}}],
            },
            {
                "job_name": "slurm",
                "static_configs": [{"targets": [f"{LOOPBACK}:{slurm.port}", f"{LOOPBACK}:{slurm_ok.port}"]}],
            },
        ],
    )
    expected_groups = {r.group for r in load_rules()}
    expected_rules = len(load_rules())

    def all_evaluated() -> list[dict[str, Any]] | None:
        groups = prom.rules()
        rules = [rule for group in groups for rule in group["rules"]]
        evaluated = all(not r.get("lastEvaluation", "").startswith("0001") for r in rules)
        if {g["name"] for g in groups} == expected_groups and len(rules) == expected_rules and evaluated:
            return groups
        return None

    groups = wait_until(all_evaluated, 30, interval=0.5, what="every rule group loaded and evaluated")
    assert isinstance(groups, list)
    unhealthy = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert unhealthy == []

    # With data scraped through the real target-label path, the node/gpu joins produce alerts.
    def alert_states() -> dict[tuple[str, ...], str]:
        return {
            (a["labels"]["alertname"], a["labels"].get("node", ""), a["labels"].get("gpu", "")): a["state"]
            for a in prom.alerts()
        }

    want = {
        ("GPUFellOffBus", "gpu-a1", "0"),
        ("GPUIdleWhileAllocated", "gpu-a1", "1"),
        ("GPUTemperatureHigh", "gpu-a1", "1"),
        ("SlurmControllerDown", "", ""),
        ("SlurmNodeMaintenance", "gpu-m1", ""),
    }
    states = wait_until(lambda: (s := alert_states()) and want <= set(s) and s, 30, what=f"alerts {sorted(want)}")
    assert isinstance(states, dict)
    assert states[("SlurmNodeMaintenance", "gpu-m1", "")] == "firing"  # no `for:`
    assert ("SlurmNodeDrained", "gpu-m1", "") not in states  # maintenance: silent
    idle = [a for a in prom.alerts() if a["labels"]["alertname"] == "GPUIdleWhileAllocated"]
    # Job 7 comes from the exporter whose polls fail (slurm_up 0): it must not act.
    assert [(a["labels"]["job_id"], a["labels"]["user"], a["labels"]["uuid"]) for a in idle] == [
        ("8", "bob", "GPU-a1-1")
    ]


# --- Alertmanager ---------------------------------------------------------------------------

TOKEN = "s3cret-agent-token"


def _alert(alertname: str, severity: str, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": alertname, "severity": severity, **labels},
        "annotations": {"summary": alertname},
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(minutes=10)).isoformat(),
        "generatorURL": "http://127.0.0.1:9090/graph",
    }


# (alert, the alert that must inhibit it or None)
ALERTS: list[tuple[dict[str, Any], str | None]] = [
    (_alert("SlurmNodeDown", "critical", component="slurm", node="gpu-a1"), None),
    (_alert("GPUXidError", "critical", component="gpu", node="gpu-a1", gpu="0", xid="48"), "SlurmNodeDown"),
    (_alert("SlurmNodeNotResponding", "warning", component="slurm", node="gpu-a1"), "SlurmNodeDown"),
    (_alert("GPUXidError", "critical", component="gpu", node="gpu-b2", gpu="0", xid="48"), None),
    # a different XID on the same GPU is news, not a duplicate
    (_alert("GPUXidError", "warning", component="gpu", node="gpu-b2", gpu="0", xid="13"), None),
    (_alert("GPUFellOffBus", "critical", component="gpu", node="gpu-b2", gpu="1"), None),
    (_alert("GPUXidError", "critical", component="gpu", node="gpu-b2", gpu="1", xid="79"), "GPUFellOffBus"),
    (_alert("GPUTemperatureHigh", "critical", component="gpu", node="gpu-b2", gpu="2"), None),
    (_alert("GPUTemperatureHigh", "warning", component="gpu", node="gpu-b2", gpu="2"), "GPUTemperatureHigh"),
    (_alert("SlurmNodeMaintenance", "info", component="slurm", node="gpu-m1"), None),
    (_alert("GPUExporterDown", "warning", component="gpu", node="gpu-m1"), "SlurmNodeMaintenance"),
    (_alert("SlurmControllerDown", "critical", component="slurm", job="slurm", instance="head:9341"), None),
    (
        _alert("SlurmGPUQueueBacklog", "warning", component="slurm", job="slurm", instance="head:9341", partition="h"),
        "SlurmControllerDown",
    ),
    # the exporter being down says nothing about the controller: no inhibition either way
    (_alert("SlurmExporterDown", "warning", component="slurm", job="slurm", instance="head:9341"), None),
]


def _key(labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(k, "") for k in ("alertname", "severity", "node", "gpu", "xid"))


def test_alertmanager_config_inhibits_and_delivers_to_the_agent_with_its_token(
    alertmanager_factory: Callable[..., AlertmanagerServer], serve: Callable[..., _Server], tmp_path: Path
) -> None:
    received: list[tuple[dict[str, str], dict[str, Any]]] = []

    def agent(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if method == "POST" and path == "/alerts":
            received.append((headers, json.loads(body)))
            return 200, "application/json", b'{"status":"accepted"}'
        return 404, "text/plain", b"not found\n"

    webhook = serve(agent)
    token_file = tmp_path / "agent-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)

    # The example config as shipped, with only the agent's address, token path and wait times
    # changed for a test.
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    hook = config["receivers"][0]["webhook_configs"][0]
    hook["url"] = f"{webhook.url}/alerts"
    hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    for route in [config["route"], *config["route"].get("routes", [])]:
        route["group_wait"] = "1s"
    config["route"]["group_interval"] = "2s"
    am = alertmanager_factory(config)
    # Sources first: Alertmanager's inhibitor learns of alerts asynchronously, and a target
    # group flushed before it has caught up would be delivered (a start-up race of
    # Alertmanager, not of this config).
    am.post_alerts([a for a, inhibitor in ALERTS if inhibitor is None])
    wait_until(lambda: len(am.alerts()) == sum(1 for _, i in ALERTS if i is None), 15, what="source alerts")
    wait_seconds(2)
    am.post_alerts([a for a, inhibitor in ALERTS if inhibitor is not None])

    def inhibitions() -> dict[tuple[str, ...], list[str]]:
        got = {_key(a["labels"]): a for a in am.alerts(active_only=False)}
        by_fingerprint = {a["fingerprint"]: a["labels"]["alertname"] for a in got.values()}
        return {key: sorted(by_fingerprint.get(f, f) for f in a["status"]["inhibitedBy"]) for key, a in got.items()}

    expected = {_key(a["labels"]): [inhibitor] if inhibitor else [] for a, inhibitor in ALERTS}
    try:
        wait_until(lambda: inhibitions() == expected, 15, what="the expected inhibitions")
    except TimeoutError:
        assert inhibitions() == expected

    delivered_expected = {_key(a["labels"]) for a, inhibitor in ALERTS if inhibitor is None}

    def delivered() -> set[tuple[str, ...]]:
        return {_key(a["labels"]) for _, payload in received for a in payload["alerts"]}

    wait_until(lambda: delivered_expected <= delivered(), 20, what="every uninhibited alert at the agent")
    wait_seconds(1)  # a late, wrong delivery of an inhibited alert would show up here
    assert delivered() == delivered_expected, [
        (p["groupLabels"], [(a["labels"], a["status"], a["startsAt"]) for a in p["alerts"]]) for _, p in received
    ]

    for headers, payload in received:
        assert headers.get("Authorization") == f"Bearer {TOKEN}"
        assert payload["version"] == "4"
        assert payload["receiver"] == "gpu-watchdog-agent"
        assert set(payload["groupLabels"]) <= {"alertname", "node"}
        assert set(payload["groupLabels"]) >= {"alertname"}


def runbook_queries() -> list[tuple[str, str]]:
    """(runbook, query) for every line of every ```promql block, placeholders filled in."""
    from tests.alert_rules.ruleset import RUNBOOKS_DIR

    out: list[tuple[str, str]] = []
    for path in sorted(RUNBOOKS_DIR.glob("*.md")):
        for block in re.findall(r"```promql\n(.*?)```", path.read_text(), re.S):
            for line in block.splitlines():
                query = re.sub(r"\s+#.*$", "", line).strip()
                if query:
                    out.append((path.stem, re.sub(r"<([a-z_]+)>", r"\1", query)))
    return out


def test_runbook_promql_parses_in_prometheus(prometheus_factory: Callable[..., PrometheusServer]) -> None:
    queries = runbook_queries()
    assert len({name for name, _ in queries}) >= 15, "most runbooks confirm with PromQL"
    prom = prometheus_factory()
    bad = []
    for name, query in queries:
        try:
            prom.query(query)
        except RuntimeError as exc:  # 400 with Prometheus' parse error
            bad.append(f"{name}: {query}: {exc}")
    assert bad == []
