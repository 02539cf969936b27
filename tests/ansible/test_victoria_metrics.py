"""The victoria_metrics role run for real on localhost (gw-supervise, a temporary prefix, a free
port), twice (idempotent), and the prometheus role's remote_write rendered and checked by promtool."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.ansible.conftest import ANSIBLE_DIR, VENV_BIN, parse_recap
from tests.harness.processes import free_port, http_get

pytestmark = pytest.mark.slow
ENV = {**os.environ, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles")}


def _play(
    tmp_path: Path, name: str, play: dict[str, object], extra_vars: dict[str, object] | None = None
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump([play], sort_keys=False))
    return subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            "ansible_python_interpreter=/usr/bin/python3",
            *(["-e", json.dumps(extra_vars)] if extra_vars else []),
            str(path),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


def _stop(prefix: Path) -> None:
    supervise = prefix / "bin" / "gw-supervise"
    if supervise.exists():
        subprocess.run(
            ["/usr/bin/python3", str(supervise), "--conf-dir", str(prefix / "services"), "--run-dir",
             str(prefix / "run"), "stop", "--all"],
            capture_output=True,
            timeout=120,
        )  # fmt: skip
    for state in (prefix / "run").glob("*.state"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(int(json.loads(state.read_text())["pid"]), signal.SIGKILL)
    for pid_file in (prefix / "run").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)


def test_role_runs_victoria_metrics_with_its_retention_idempotently(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the role creates directories owned by other users: run as root (CI does)")
    # The service runs as the package's user: the prefix must be reachable for it (pytest's
    # own temporary directories are 0700), as /opt/gpu-watchdog is.
    prefix = Path(tempfile.mkdtemp(prefix="gw-vm-"))
    prefix.chmod(0o755)
    port = free_port()
    play = {
        "hosts": "localhost",
        "gather_facts": True,
        "vars": {
            "gpu_watchdog_prefix": str(prefix),
            "gw_service_manager": "supervisor",
            "victoria_metrics_enabled": True,
            "victoria_metrics_install_packages": False,  # installed by make system-deps (APT_PACKAGES)
            "victoria_metrics_listen_host": "127.0.0.1",
            "victoria_metrics_port": port,
            "victoria_metrics_retention_period": "30d",
        },
        "roles": ["victoria_metrics"],
    }
    try:
        first = _play(tmp_path, "vm", play)
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
        assert http_get(f"http://127.0.0.1:{port}/health", timeout=10)[0] == 200
        # The retention set in the role reached the running server (it logs its flags at start).
        log = (prefix / "log" / "victoria-metrics.log").read_text()
        assert 'flag "retentionPeriod"="30d"' in log, log[-3000:]
        assert 'flag "search.latencyOffset"="5s"' in log, log[-3000:]
        second = _play(tmp_path, "vm", play)
        assert second.returncode == 0, second.stdout[-6000:]
        assert parse_recap(second.stdout)["localhost"]["changed"] == 0, second.stdout[-6000:]
    finally:
        _stop(prefix)
        shutil.rmtree(prefix, ignore_errors=True)


def _render_prometheus_config(tmp_path: Path, extra_vars: dict[str, object]) -> dict[str, object]:
    dest = tmp_path / "prometheus.yml"
    # The role's own template with its defaults and vars loaded, as the role renders it.
    role = ANSIBLE_DIR / "roles" / "prometheus"
    play: dict[str, object] = {
        "hosts": "localhost",
        "gather_facts": False,
        "vars_files": [str(role / "defaults" / "main.yml"), str(role / "vars" / "main.yml")],
        "vars": {
            "prometheus_monitoring_hosts": ["localhost"],
            "prometheus_gpu_hosts": [],
            "prometheus_slurm_hosts": [],
            "prometheus_runpod_hosts": [],
            **extra_vars,
        },
    }
    play["tasks"] = [
        {
            "name": "Render prometheus.yml",
            "ansible.builtin.template": {
                "src": str(role / "templates" / "prometheus.yml.j2"),
                "dest": str(dest),
                "mode": "0644",
                "validate": "/usr/bin/promtool check config %s",
            },
        }
    ]
    # Extra vars: the role's defaults file (vars_files) would outrank play vars.
    result = _play(tmp_path, "render", play, extra_vars)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return dict(yaml.safe_load(dest.read_text()))


def test_prometheus_remote_writes_to_victoria_metrics_when_enabled(tmp_path: Path) -> None:
    off = _render_prometheus_config(tmp_path, {})
    assert "remote_write" not in off
    on = _render_prometheus_config(tmp_path, {"victoria_metrics_enabled": True, "victoria_metrics_port": 18428})
    assert on["remote_write"] == [
        {"url": "http://127.0.0.1:18428/api/v1/write", "queue_config": {"batch_send_deadline": "5s"}}
    ]
    # A VictoriaMetrics cluster: vminsert's URL in the same setting.
    cluster = _render_prometheus_config(
        tmp_path, {"prometheus_remote_write_url": "http://vminsert.example:8480/insert/0/prometheus/api/v1/write"}
    )
    assert cluster["remote_write"][0]["url"] == "http://vminsert.example:8480/insert/0/prometheus/api/v1/write"  # type: ignore[index]
