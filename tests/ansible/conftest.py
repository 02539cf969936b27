"""A real deployment of ansible/site.yml onto this machine, shared by the tests of test_site.py.

What it configures is the system's own munge and Slurm (munged on the default socket,
/etc/slurm, /var/spool/slurm*), as `make up` would; everything of gpu-watchdog's own goes under
a temporary prefix, and every TCP port (Slurm's included) is a free one, so it cannot collide
with a running `make up` or with other tests. The deployment goes through `scripts/stack.py up`,
the script `make up` runs (ansible-playbook site.yml with inventory/local.yml, plus the test's
variables). Three runs share one module-scoped fixture: the deployment, a second `up`
(idempotence), and `gpu-watchdog deploy --check` (ansible-runner). The simulated GPUs read the
checkout's `.run/sim-faults.yml`, as after `make up`: its content is set aside and restored.
Teardown runs `make down`, then stops whatever is left by the pid files gw-supervise wrote.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from tests.harness.processes import free_port

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
# Where `gpu-watchdog sim` (run from the checkout) and the deployed sim exporter meet (local.yml).
SIM_FAULTS = REPO / ".run" / "sim-faults.yml"
VENV_BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)", re.M)  # fmt: skip
# The foundation ships stubs that exit 1; each component's branch replaces one.
PROGRAMS = {
    "gpu-exporter": "exporters/gpu/cli.py",
    "slurm-exporter": "exporters/slurm/cli.py",
    "agent-webhook": "agent_webhook/cli.py",
}


def program_built(name: str) -> bool:
    return "not built yet" not in (REPO / PROGRAMS[name]).read_text()


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    return {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")} for m in RECAP.finditer(output)
    }


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return parse_recap(self.stdout)

    def explain(self) -> str:
        head = f"$ {' '.join(self.argv)}\n(rc {self.returncode}, {self.seconds:.0f}s)"
        return f"{head}\n{self.stdout[-12000:]}\n{self.stderr[-4000:]}"


@dataclass
class Deployment:
    prefix: Path
    vars_file: Path
    variables: dict[str, Any]
    built: dict[str, bool]
    runs: dict[str, Run] = field(default_factory=dict)

    def port(self, name: str) -> int:
        return int(self.variables[name])

    @property
    def exporter_auth(self) -> dict[str, str]:
        user = self.variables["prometheus_exporter_basic_auth_username"]
        secret = self.variables["prometheus_exporter_basic_auth_password"]
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}

    def web_auth(self, port_var: str) -> dict[str, str]:
        """The basic-auth header of Prometheus (prometheus_port) or Alertmanager (alertmanager_port)."""
        users = self.variables[port_var.replace("_port", "_web_users")]
        user, secret = next(iter(users.items()))
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}

    def url(self, port_var: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port(port_var)}{path}"

    @property
    def supervise(self) -> list[str]:
        return [
            "/usr/bin/python3",
            str(self.prefix / "bin" / "gw-supervise"),
            "--conf-dir",
            str(self.prefix / "services"),
            "--run-dir",
            str(self.prefix / "run"),
        ]


def run_cmd(
    argv: list[str], timeout: float = 420, cwd: Path = ANSIBLE_DIR, extra_env: dict[str, str] | None = None
) -> Run:
    started = time.monotonic()
    # Commands find the fault file by their default, as a newcomer's do.
    env = {k: v for k, v in os.environ.items() if k != "GPU_WATCHDOG_SIM_FAULTS"} | (extra_env or {})
    result = subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "ANSIBLE_NOCOLOR": "1"},
    )
    return Run(argv, result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def make_target(target: str, *up_args: str, timeout: float = 420) -> Run:
    """`make TARGET` in the checkout with this venv; UP_ARGS: ansible-playbook's -e options."""
    argv = ["make", "--no-print-directory", target, f"VENV={sys.prefix}", f"UP_ARGS={' '.join(up_args)}"]
    return run_cmd(argv, timeout=timeout, cwd=REPO)


def make(deployment: Deployment, target: str, timeout: float = 420) -> Run:
    """`make up|down|status` on the test's deployment (its prefix and ports)."""
    return make_target(target, f"-e @{deployment.vars_file}", timeout=timeout)


def stack_up(deployment: Deployment) -> Run:
    """What `make up` runs after installing its dependencies (make's own prerequisites would
    reinstall the checkout's venv when its stamp is older than setup.cfg)."""
    argv = [sys.executable, str(REPO / "scripts" / "stack.py"), "up", "-e", f"@{deployment.vars_file}"]
    return run_cmd(argv, cwd=REPO)


def _foreign_munged() -> int | None:
    """A munged already serving the default socket that a previous run or `make up` left."""
    try:
        pid = int(Path("/run/munge/munged.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _stop_everything(deployment: Deployment) -> None:
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        make(deployment, "down", timeout=180)
    if (deployment.prefix / "bin" / "gw-supervise").exists():
        subprocess.run([*deployment.supervise, "stop", "--all"], capture_output=True, timeout=120)
    # Whatever a crashed keeper left behind, by the pids it recorded (never by name).
    for state in (deployment.prefix / "run").glob("*.state"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(state.read_text())["pid"])
            os.kill(pid, signal.SIGKILL)
    for pid_file in (deployment.prefix / "run").glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    if os.geteuid() != 0:
        pytest.fail("the Ansible deployment test configures munge and Slurm: run it as root (CI does)", pytrace=False)
    if pid := _foreign_munged():
        pytest.fail(
            f"a munged (pid {pid}) already serves /run/munge: stop what started it (make down) and rerun",
            pytrace=False,
        )
    # Not under pytest's tmp dir: that one is 0700, and Prometheus runs as its own user.
    root = Path(tempfile.mkdtemp(prefix="gw-ansible-test-"))
    root.chmod(0o755)
    prefix = root / "prefix"
    grafana = root / "grafana"
    (grafana / "provisioning").mkdir(parents=True)  # an "existing Grafana"
    built = {name: program_built(name) for name in PROGRAMS}
    # The exporters sit behind basic auth (their --web-config); Prometheus scrapes with it.
    password = secrets.token_urlsafe(18)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    variables: dict[str, Any] = {
        "gpu_watchdog_prefix": str(prefix),
        "slurm_head_ctld_port": free_port(),
        "slurm_head_slurmd_port": free_port(),
        "prometheus_port": free_port(),
        "alertmanager_port": free_port(),
        "agent_webhook_port": free_port(),
        "exporters_gpu_port": free_port(),
        "exporters_slurm_port": free_port(),
        "prometheus_scrape_interval": "2s",
        "prometheus_evaluation_interval": "2s",
        "exporters_slurm_interval": 5,
        "grafana_provisioning_dir": str(grafana / "provisioning"),
        "grafana_dashboards_dir": str(grafana / "dashboards"),
        "exporters_web_config": {"basic_auth_users": {"prometheus": hashed}},
        "prometheus_exporter_basic_auth_username": "prometheus",
        "prometheus_exporter_basic_auth_password": password,
        # Prometheus and Alertmanager behind their web configs (issue 15: RunPod's public proxy);
        # every consumer on the deployment (Prometheus, the agent, Grafana) must log in.
        "prometheus_web_users": {"admin": secrets.token_urlsafe(18)},
        "alertmanager_web_users": {"admin": secrets.token_urlsafe(18)},
        "exporters_gpu_enabled": built["gpu-exporter"],
        "exporters_slurm_enabled": built["slurm-exporter"],
        "agent_webhook_enabled": built["agent-webhook"],
    }
    vars_file = root / "test-vars.json"
    vars_file.write_text(json.dumps(variables, indent=2))
    deployment = Deployment(prefix=prefix, vars_file=vars_file, variables=variables, built=built)
    saved_faults = SIM_FAULTS.read_bytes() if SIM_FAULTS.exists() else None
    SIM_FAULTS.unlink(missing_ok=True)  # no fault of an earlier session applies to this one
    try:
        deployment.runs["first"] = stack_up(deployment)
        if deployment.runs["first"].returncode == 0:
            deployment.runs["second"] = stack_up(deployment)
            deployment.runs["check"] = run_cmd(
                [
                    str(VENV_BIN / "gpu-watchdog"),
                    "deploy",
                    "--check",
                    "--ansible-dir",
                    str(ANSIBLE_DIR),
                    "-e",
                    f"@{vars_file}",
                ]
            )
        yield deployment
    finally:
        _stop_everything(deployment)
        shutil.rmtree(root, ignore_errors=True)
        if saved_faults is None:
            SIM_FAULTS.unlink(missing_ok=True)
        else:
            SIM_FAULTS.write_bytes(saved_faults)
