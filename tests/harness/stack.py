"""The whole gpu-watchdog pipeline on loopback, for end-to-end tests and bench/e2e_time_to_finding.py.

    private Slurm (munged, slurmctld, slurmd; fake GPU GRES) ─▶ slurm-exporter ─┐
    gpu-exporter --backend sim (faults from a fault file) ───────────────────────┤ scrape 1 s
                                                                                 ▼
    Prometheus (time-compressed copies of alert_rules/*.rules.yml, 1 s evaluation)
        ─▶ Alertmanager (alert_rules/alertmanager.yml: its routes and inhibit rules, timers compressed)
        ─▶ agent-webhook (deterministic triage, SQLite) ─▶ webhook sink ─▶ CaptureSink (loopback)

Every daemon is the real program, started under a :class:`ProcessManager`, stopped by pid.

Time compression (the "test config"): the rules and Alertmanager timers are divided by one factor
(60 by default: a minute becomes a second); see scripts/time_compression.py.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from scripts.time_compression import TIME_FACTOR, compressed_alertmanager_config, compressed_rule_files
from tests.fakes.threaded_server import ThreadedServer
from tests.harness.processes import LOOPBACK, ManagedProcess, ProcessManager, free_port, http_get, wait_until
from tests.harness.promstack import (
    AlertmanagerServer,
    PrometheusServer,
    prometheus_config,
    start_alertmanager,
    start_prometheus,
)
from tests.harness.slurm import SlurmCluster, start_cluster
from tests.harness.victoria import VictoriaMetricsServer, start_victoria_metrics

REPO = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent


# -- the sink ---------------------------------------------------------------------------------


@dataclass
class SinkPost:
    event: str
    finding: dict[str, Any]
    at: float


class CaptureSink(ThreadedServer):
    """A loopback HTTP endpoint for the agent's `webhook` sink: records every JSON post."""

    def __init__(self) -> None:
        self.posts: list[SinkPost] = []
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/findings", self._post)
        super().__init__(app)

    @property
    def url(self) -> str:
        return f"{self.base_url}/findings"

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            self.posts.append(SinkPost(str(body.get("event")), dict(body.get("finding") or {}), time.time()))
        return web.json_response({"ok": True})

    def for_finding(self, finding_id: str) -> list[SinkPost]:
        with self._lock:
            return [p for p in self.posts if p.finding.get("id") == finding_id]


# -- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    procs: ProcessManager
    slurm: SlurmCluster
    node: str
    faults: Path
    gpu_exporter: ManagedProcess
    slurm_exporter: ManagedProcess
    prometheus: PrometheusServer
    alertmanager: AlertmanagerServer
    sink: CaptureSink
    agent_port: int
    token: str
    token_file: Path
    db: Path
    factor: float
    agent: ManagedProcess | None = None
    # Prometheus remote_writes into it and the agent reads from it (start_stack(victoria=True)).
    victoria: VictoriaMetricsServer | None = None

    @property
    def metrics_url(self) -> str:
        """Where the agent reads metrics: VictoriaMetrics when the stack has one, else Prometheus."""
        return self.victoria.url if self.victoria is not None else self.prometheus.url

    @property
    def agent_url(self) -> str:
        return f"http://{LOOPBACK}:{self.agent_port}"

    # -- faults ---------------------------------------------------------------------------

    def sim(self, *args: str) -> None:
        """`gpu-watchdog sim ARGS --faults <this stack's fault file>` (the CLI operators use)."""
        argv = [str(BIN / "gpu-watchdog"), "sim", *args[:1], "--faults", str(self.faults), *args[1:]]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")

    def inject(self, gpu: int, kind: str, *value: str) -> None:
        self.sim("inject", "--gpu", str(gpu), kind, *value)

    def clear(self, gpu: int) -> None:
        self.sim("clear", "--gpu", str(gpu))

    # -- the agent ------------------------------------------------------------------------

    def agent_config(self, llm: Mapping[str, Any] | None = None) -> Path:
        config: dict[str, Any] = {
            "listen": f"{LOOPBACK}:{self.agent_port}",
            "db": str(self.db),
            "token_file": str(self.token_file),
            "workers": 2,
            "prometheus_url": self.metrics_url,
            "alertmanager_url": self.alertmanager.url,
            "sinks": [{"type": "webhook", "url": self.sink.url}],
            "sink_retry": {"initial_seconds": 0.5, "max_seconds": 5},
            # Every fault of this one-node stack is checked as its own finding, post and (for the
            # crash test) concurrent investigation; grouping a node's alerts into incidents is
            # tested against a real Alertmanager in tests/agent/test_incidents.py.
            "incident_window_seconds": 0,
        }
        if llm:
            config["llm"] = dict(llm)
        path = self.workdir / "agent.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start_agent(self, llm: Mapping[str, Any] | None = None) -> ManagedProcess:
        argv = [str(BIN / "agent-webhook"), "--config", str(self.agent_config(llm)), "--log-level", "debug"]
        self.agent = self.procs.start("agent-webhook", argv)
        self.agent.wait_http(f"{self.agent_url}/healthz", timeout=60)
        return self.agent

    def findings(self, **filters: str) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in {"limit": "1000", **filters}.items())
        status, body = http_get(
            f"{self.agent_url}/findings?{query}", headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )
        if status != 200:
            raise RuntimeError(f"GET /findings -> {status}: {body[:200]!r}")
        return list(json.loads(body)["findings"])

    def deliveries(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        """The alerts the agent stored (one row per fingerprint and startsAt) with `times_seen`:
        how many Alertmanager notifications carried each (read-only, beside the running agent)."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                "SELECT fingerprint, starts_at, status, labels, times_seen FROM alerts WHERE alertname=?",
                (alertname,),
            ).fetchall()
        out = []
        for row in rows:
            stored = json.loads(row["labels"])
            if all(stored.get(k) == v for k, v in labels.items()):
                out.append({**dict(row), "labels": stored})
        return out

    # -- Prometheus -----------------------------------------------------------------------

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.prometheus.alerts()
            if a["state"] == "firing"
            and a["labels"].get("alertname") == alertname
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def stop(self) -> None:
        self.sink.stop()
        victoria = self.victoria.process if self.victoria is not None else None
        for proc in (self.agent, self.alertmanager.process, self.prometheus.process, victoria):
            if proc is not None:
                proc.stop()
        self.gpu_exporter.stop()
        self.slurm_exporter.stop()
        self.slurm.stop()


def start_stack(
    procs: ProcessManager,
    workdir: Path,
    *,
    factor: float = TIME_FACTOR,
    sim_gpus: int = 8,
    on_started: Callable[[str], None] | None = None,
    victoria: bool = False,
) -> Stack:
    """Start everything; returns once Prometheus has scraped both exporters.

    `victoria`: Prometheus also remote_writes to a real VictoriaMetrics, and the agent reads
    its evidence from there (docs/scaling.md); returns once the samples have arrived there too.
    """
    note = on_started or (lambda what: None)
    workdir.mkdir(parents=True, exist_ok=True)
    slurm = start_cluster(procs, fake_nodes=0)
    started: list[Callable[[], object]] = [slurm.stop]
    try:
        note("slurm")
        node = slurm.hostname
        faults = workdir / "sim-faults.yml"
        gpu_port, slurm_port = free_port(), free_port()
        gpu_exporter = procs.start(
            "gpu-exporter",
            [str(BIN / "gpu-exporter"), "--backend", "sim", "--sim-gpus", str(sim_gpus), "--sim-faults", str(faults),
             "--interval", "1", "--listen", f"{LOOPBACK}:{gpu_port}"],
        )  # fmt: skip
        started.append(gpu_exporter.stop)
        slurm_exporter = procs.start(
            "slurm-exporter",
            [str(BIN / "slurm-exporter"), "--backend", "cli", "--interval", "1", "--command-timeout", "5",
             "--listen", f"{LOOPBACK}:{slurm_port}"],
            env=slurm.env,
        )  # fmt: skip
        started.append(slurm_exporter.stop)
        gpu_exporter.wait_http(f"http://{LOOPBACK}:{gpu_port}/healthz", timeout=60)
        slurm_exporter.wait_http(f"http://{LOOPBACK}:{slurm_port}/metrics", timeout=60)
        note("exporters")

        token = secrets.token_urlsafe(24)
        token_file = workdir / "agent-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        agent_port = free_port()
        am = start_alertmanager(
            procs, workdir, compressed_alertmanager_config(f"http://{LOOPBACK}:{agent_port}", token_file, factor)
        )
        started.append(am.process.stop)
        rules = compressed_rule_files(workdir / "rules", factor)
        vm = start_victoria_metrics(procs, workdir) if victoria else None
        if vm is not None:
            started.append(vm.process.stop)
        prom_config = prometheus_config(
            rule_files=rules,
            alertmanager_urls=[am.url],
            extra_scrape_configs=[
                # GPU series get the Slurm NodeName as a target label (docs/architecture.md).
                {"job_name": "gpu", "static_configs": [{"targets": [f"{LOOPBACK}:{gpu_port}"],
                                                        "labels": {"node": node}}]},
                {"job_name": "slurm", "static_configs": [{"targets": [f"{LOOPBACK}:{slurm_port}"]}]},
            ],
        )  # fmt: skip
        if vm is not None:
            prom_config["remote_write"] = [vm.remote_write()]
        prom = start_prometheus(procs, workdir, config=prom_config, resend_delay="2s")
        started.append(prom.process.stop)
        note("prometheus+alertmanager")
        sink = CaptureSink()
        sink.start()
        started.append(sink.stop)
        stack = Stack(
            workdir=workdir,
            procs=procs,
            slurm=slurm,
            node=node,
            faults=faults,
            gpu_exporter=gpu_exporter,
            slurm_exporter=slurm_exporter,
            prometheus=prom,
            alertmanager=am,
            sink=sink,
            agent_port=agent_port,
            token=token,
            token_file=token_file,
            db=workdir / "agent.db",
            factor=factor,
            victoria=vm,
        )
        stack.start_agent()
        note("agent")
        # Scraped once, so the counters' first samples are their values before any fault. No
        # longer history is needed: the XID rule keys a new XID on the exporter's first-seen
        # stamp, not on Prometheus's past (a scenario right after start-up pages, as in prod).
        prom.wait_for('up{job="gpu"} == 1', timeout=120)
        prom.wait_for('slurm_up{job="slurm"} == 1', timeout=60)
        if vm is not None:
            vm.wait_for('up{job="gpu"} == 1', timeout=60)
            vm.wait_for('slurm_up{job="slurm"} == 1', timeout=60)
        note("scraped")
        return stack
    except BaseException:
        for stop in reversed(started):
            stop()
        raise


# -- faults and what they must become ------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault to inject, the alert it must raise (`alertname` + `labels` pick it out of the
    findings) and the triage it must get (`triage_rule`, a cause and an action fragment)."""

    name: str
    alertname: str
    labels: Mapping[str, str]
    triage_rule: str
    cause: str
    action: str
    inject: Callable[[Stack], None]
    clear: Callable[[Stack], None]


DRAIN_REASON = "health check failed: GPU memory test"


def _drain(stack: Stack) -> None:
    stack.slurm.scontrol("update", f"nodename={stack.node}", "state=drain", f"reason={DRAIN_REASON}")


def _resume(stack: Stack) -> None:
    stack.slurm.scontrol("update", f"nodename={stack.node}", "state=resume")


# One GPU per fault so that faults never share an alert, a group or an inhibition.
FAULTS: dict[str, Fault] = {
    "xid79": Fault(
        "XID 79 on GPU 1",
        "GPUXidError",
        {"gpu": "1", "xid": "79"},
        "xid:79",
        "XID 79 (GPU has fallen off the bus)",
        "Drain the node in Slurm",
        lambda s: s.inject(1, "xid", "79"),
        lambda s: s.clear(1),
    ),
    "dbe": Fault(
        "double-bit ECC on GPU 2",
        "GPUDoubleBitECC",
        {"gpu": "2"},
        "policy:dbe",
        "uncorrectable double-bit ECC (DBE) memory error",
        "Reset the GPU to apply row remapping",
        lambda s: s.inject(2, "ecc_dbe", "1"),
        lambda s: s.clear(2),
    ),
    "thermal": Fault(
        "thermal throttling on GPU 3",
        "GPUThermalThrottling",
        {"gpu": "3"},
        "policy:thermal_throttle",
        "thermal throttling; the GPU is too hot",
        "Check cooling and airflow of the node",
        lambda s: s.inject(3, "throttle", "thermal"),
        lambda s: s.clear(3),
    ),
    "drain": Fault(
        "Slurm node drained",
        "SlurmNodeDrained",
        {},
        "drain-reason:nhc",
        "the node health check (NHC) failed on the node",
        "Read the NHC log on the node",
        _drain,
        _resume,
    ),
}


def _epoch(rfc3339: str) -> float:
    return datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def matching_findings(stack: Stack, fault: Fault) -> list[dict[str, Any]]:
    found = stack.findings(alertname=fault.alertname, node=stack.node)
    return [f for f in found if all(f["labels"].get(k) == v for k, v in fault.labels.items())]


def inject_until_finding(stack: Stack, fault: Fault, timeout: float = 120.0) -> tuple[dict[str, Any], float]:
    """Inject `fault`; returns its finding and the seconds from injection to the finding's creation."""
    before = {f["id"] for f in matching_findings(stack, fault)}  # a fault injected again: a new alert
    started = time.time()
    fault.inject(stack)
    found = wait_until(
        lambda: [f for f in matching_findings(stack, fault) if f["id"] not in before],
        timeout,
        interval=0.2,
        what=f"a finding for {fault.name}",
    )
    finding = dict(found[0])  # type: ignore[index]
    return finding, _epoch(finding["created_at"]) - started


def clear_until_resolved(stack: Stack, fault: Fault, finding_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Clear `fault`; returns the finding once it is resolved and the sink got the resolve."""
    fault.clear(stack)

    def resolved() -> dict[str, Any] | None:
        current = [f for f in matching_findings(stack, fault) if f["id"] == finding_id]
        posted = any(p.event == "resolved" for p in stack.sink.for_finding(finding_id))
        if current and current[0]["status"] == "resolved" and posted:
            return dict(current[0])
        return None

    done = wait_until(resolved, timeout, interval=0.25, what=f"{fault.name} resolved")
    assert isinstance(done, dict)
    return done
