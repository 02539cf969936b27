#!/usr/bin/env python3
"""`make up` / `make down` / `make status`: the suite on this machine, on loopback, with pid files.

Each service is started in its own session with its log and pid file under `.run/`; `up` skips
services whose pid is alive (safe to run twice), `down` stops only the pids it recorded.
A component whose console script is not usable yet is reported and skipped, never fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# Tests run a private copy of the stack: another state dir and shifted ports.
RUN = Path(os.environ.get("DEVSTACK_RUN_DIR", REPO / ".run"))
PORT_OFFSET = int(os.environ.get("DEVSTACK_PORT_OFFSET", "0"))
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
# Slurm's NodeName for this machine: GPU series get it as the `node` target label.
NODE = socket.gethostname().split(".")[0]


@dataclass
class Service:
    name: str
    port: int
    ready_path: str
    argv: Callable[[], list[str] | None]  # None: not available on this machine, skip
    scrape_job: str | None = None
    labels: dict[str, str] | None = None  # target labels Prometheus adds to every scraped series

    def __post_init__(self) -> None:
        self.port += PORT_OFFSET

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
        if found:
            return found
    return None


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def prometheus_argv() -> list[str] | None:
    binary = _binary("prometheus")
    if not binary:
        return None
    scrape = [
        {
            "job_name": s.scrape_job,
            "static_configs": [{"targets": [f"{HOST}:{s.port}"], **({"labels": s.labels} if s.labels else {})}],
        }
        for s in SERVICES
        if s.scrape_job and s.name != "prometheus"
    ]
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(p) for p in sorted((REPO / "alert_rules").glob("*.rules.yml"))],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{HOST}:{9093 + PORT_OFFSET}"]}]}]},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{HOST}:{9090 + PORT_OFFSET}"]}]},
            *scrape,
        ],
    }
    path = _write(RUN / "prometheus" / "prometheus.yml", yaml.safe_dump(config, sort_keys=False))
    return [
        binary,
        f"--config.file={path}",
        f"--storage.tsdb.path={RUN / 'prometheus' / 'data'}",
        f"--web.listen-address={HOST}:{9090 + PORT_OFFSET}",
        "--web.enable-lifecycle",
        "--rules.alert.resend-delay=5s",
    ]


def alertmanager_argv() -> list[str] | None:
    binary = _binary("prometheus-alertmanager", "alertmanager")
    if not binary:
        return None
    config = {"route": {"receiver": "null", "group_by": ["alertname", "node"]}, "receivers": [{"name": "null"}]}
    path = _write(RUN / "alertmanager" / "alertmanager.yml", yaml.safe_dump(config, sort_keys=False))
    return [
        binary,
        f"--config.file={path}",
        f"--storage.path={RUN / 'alertmanager' / 'data'}",
        f"--web.listen-address={HOST}:{9093 + PORT_OFFSET}",
        "--cluster.listen-address=",
    ]


def gpu_exporter_argv() -> list[str] | None:
    binary = _binary("gpu-exporter")
    if not binary:
        return None
    return [
        binary,
        "--backend=sim",
        "--sim-gpus=8",
        f"--sim-faults={RUN / 'sim-faults.yml'}",
        "--interval=2",
        f"--listen={HOST}:{9400 + PORT_OFFSET}",
    ]


def slurm_exporter_argv() -> list[str] | None:
    """Only when a Slurm controller answers `scontrol ping` (issue 10 starts Slurm itself)."""
    binary, scontrol = _binary("slurm-exporter"), shutil.which("scontrol")
    if not binary or not scontrol:
        return None
    try:
        ping = subprocess.run([scontrol, "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if ping.returncode != 0 or "is UP" not in ping.stdout:
        return None
    return [binary, "--listen", f"{HOST}:{9341 + PORT_OFFSET}", "--interval", "15"]


def agent_webhook_argv() -> list[str] | None:
    binary = _binary("agent-webhook")
    if not binary:
        return None
    state = RUN / "agent-webhook"
    state.mkdir(parents=True, exist_ok=True)
    token = state / "token"
    if not token.exists():
        import secrets

        # Alertmanager's webhook_configs.http_config.authorization.credentials_file points here.
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return [
        binary,
        f"--listen={HOST}:{9095 + PORT_OFFSET}",
        f"--db={state / 'agent.db'}",
        f"--token-file={token}",
        f"--prometheus-url=http://{HOST}:{9090 + PORT_OFFSET}",
        f"--alertmanager-url=http://{HOST}:{9093 + PORT_OFFSET}",
    ]


SERVICES: list[Service] = [
    Service("gpu-exporter", 9400, "/healthz", gpu_exporter_argv, scrape_job="gpu", labels={"node": NODE}),
    Service("alertmanager", 9093, "/-/ready", alertmanager_argv, scrape_job="alertmanager"),
    Service("slurm-exporter", 9341, "/metrics", slurm_exporter_argv, scrape_job="slurm"),
    Service("prometheus", 9090, "/-/ready", prometheus_argv),
    Service("agent-webhook", 9095, "/healthz", agent_webhook_argv, scrape_job="agent"),
]


def _pid_file(service: Service) -> Path:
    return RUN / f"{service.name}.pid"


def _running_pid(service: Service) -> int | None:
    try:
        pid = int(_pid_file(service).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _ready(service: Service) -> bool:
    try:
        with urllib.request.urlopen(service.url + service.ready_path, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def up() -> int:
    RUN.mkdir(exist_ok=True)
    (RUN / "logs").mkdir(exist_ok=True)
    problems = 0
    for service in SERVICES:
        if _running_pid(service):
            print(f"  {service.name:14} already running   {service.url}")
            continue
        argv = service.argv()
        if argv is None:
            print(f"  {service.name:14} skipped: not installed")
            continue
        if _port_busy(service.port):
            print(f"  {service.name:14} skipped: port {service.port} is used by another process")
            problems += 1
            continue
        log = open(RUN / "logs" / f"{service.name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO
        )
        _pid_file(service).write_text(str(proc.pid))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not _ready(service):
            time.sleep(0.2)
        if _ready(service):
            print(f"  {service.name:14} started           {service.url}")
        else:
            print(f"  {service.name:14} did not become ready; see {RUN / 'logs' / (service.name + '.log')}")
            problems += 1
    print()
    by_name = {s.name: s for s in SERVICES}
    print(f"Prometheus:   {by_name['prometheus'].url}   (alerts: /alerts, targets: /targets)")
    print(f"Alertmanager: {by_name['alertmanager'].url}")
    print(f"Logs: {RUN / 'logs'}   Stop everything: make down")
    return 1 if problems else 0


def down() -> int:
    for service in reversed(SERVICES):
        pid = _running_pid(service)
        if pid is None:
            _pid_file(service).unlink(missing_ok=True)
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            if _running_pid(service) is None:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        # Reap our own children if this process started them (make up && make down in one shell).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        _pid_file(service).unlink(missing_ok=True)
        print(f"  {service.name:14} stopped")
    return 0


def status() -> int:
    for service in SERVICES:
        pid = _running_pid(service)
        state = f"running (pid {pid}){'' if _ready(service) else ', not ready'}" if pid else "stopped"
        print(f"  {service.name:14} {state:28} {service.url}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args()
    return {"up": up, "down": down, "status": status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
