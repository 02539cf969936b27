"""site.yml deployed for real onto this machine (inventory/local.yml, simulated GPUs): what runs.

The deployment itself happens once, through `make up`'s script, in the module-scoped
`deployment` fixture (conftest.py). The last two tests run the README walkthrough (a fault
injected with the CLI becomes an alert and a finding) and `make down`; they stay last.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ansible.conftest import REPO, SIM_FAULTS, VENV_BIN, Deployment, make, run_cmd
from tests.harness.processes import http_get, wait_until

# The module's deployment (two `up` runs and a --check run, 4-5 minutes on a loaded 2-core
# machine) is set up inside the first test, so that test needs more than the default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
NODE = socket.gethostname().split(".")[0]
SLURM_ENV = {**os.environ, "SLURM_CONF": "/etc/slurm/slurm.conf"}


def _json(url: str, headers: dict[str, str] | None = None) -> Any:
    status, body = http_get(url, timeout=5, headers=headers)
    assert status == 200, f"GET {url} -> {status}: {body[:300]!r}"
    return json.loads(body)


def _need(deployment: Deployment, program: str) -> None:
    if not deployment.built[program]:
        pytest.skip(f"{program} is still the foundation's stub on this branch (merge its issue's branch)")


def test_site_yml_deploys_without_failures(deployment: Deployment) -> None:
    run = deployment.runs["first"]
    assert run.returncode == 0, run.explain()
    assert run.recap == {"localhost": {**run.recap["localhost"], "failed": 0, "unreachable": 0}}
    assert run.recap["localhost"]["changed"] > 0
    print(f"first run: {run.seconds:.0f}s, {run.recap['localhost']}")


def test_a_second_run_changes_nothing(deployment: Deployment) -> None:
    run = deployment.runs.get("second")
    assert run is not None, "the first run failed"
    assert run.returncode == 0, run.explain()
    changed = [line for line in run.stdout.splitlines() if line.startswith("changed:")]
    assert run.recap["localhost"]["changed"] == 0, run.explain() + "\n".join(changed)
    print(f"second run: {run.seconds:.0f}s, {run.recap['localhost']}")


def test_deploy_check_through_ansible_runner_is_clean_and_summarised(deployment: Deployment) -> None:
    run = deployment.runs.get("check")
    assert run is not None, "the first run failed"
    assert run.returncode == 0, run.explain()
    lines = run.stdout.splitlines()
    assert lines[0].split()[:5] == ["host", "ok", "changed", "failed", "unreachable"]
    host, ok, changed, failed, unreachable = lines[1].split()[:5]
    assert (host, changed, failed, unreachable) == ("localhost", "0", "0", "0"), run.explain()
    assert int(ok) > 50
    assert "(check mode)" in run.stderr and "deploy: successful" in run.stderr
    assert "ok          localhost  slurm_head : Write slurm.conf" in run.stderr  # a plain line per task
    print(f"check run: {run.seconds:.0f}s")


def test_munge_credentials_round_trip(deployment: Deployment) -> None:
    encoded = subprocess.run(["munge", "-n"], capture_output=True, text=True, timeout=10)
    assert encoded.returncode == 0, encoded.stderr
    decoded = subprocess.run(["unmunge"], input=encoded.stdout, capture_output=True, text=True, timeout=10)
    assert decoded.returncode == 0 and "STATUS:          Success (0)" in decoded.stdout
    key = Path("/etc/munge/munge.key").stat()
    assert oct(key.st_mode & 0o777) == "0o400"


def test_slurm_is_configless_with_the_node_idle_and_its_gpus(deployment: Deployment) -> None:
    conf = Path("/etc/slurm/slurm.conf").read_text()
    assert "SlurmctldParameters=enable_configless" in conf
    assert "ProctrackType=proctrack/linuxproc" in conf and "TaskPlugin=task/none" in conf
    assert f"SlurmctldPort={deployment.port('slurm_head_ctld_port')}" in conf
    assert "Name=gpu Type=h100 File=/dev/gwsim-gpu[0-3]" in Path("/etc/slurm/gres.conf").read_text()
    slurmd = json.loads(
        subprocess.run([*deployment.supervise, "status", "slurmd"], capture_output=True, text=True).stdout
    )
    argv = Path(f"/proc/{slurmd['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"--conf-server" in argv and b"-f" not in argv  # it fetched its configuration
    sinfo = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format", "%N|%t|%G"], capture_output=True, text=True, env=SLURM_ENV
    )
    assert sinfo.returncode == 0, sinfo.stderr
    assert f"{NODE}|idle|gpu:h100:4" in sinfo.stdout.split(), sinfo.stdout


def test_a_gpu_job_runs_to_completion(deployment: Deployment, tmp_path: Path) -> None:
    job = subprocess.run(
        ["srun", "--gres=gpu:1", "--time=1", "--chdir", "/tmp", "sh", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES"],
        capture_output=True,
        text=True,
        env=SLURM_ENV,
        timeout=120,
    )
    assert job.returncode == 0, job.stderr
    assert job.stdout.strip() == "gpus=0"


def test_prometheus_and_alertmanager_answer_only_with_their_web_users(deployment: Deployment) -> None:
    for port_var, name in (("prometheus_port", "prometheus"), ("alertmanager_port", "alertmanager")):
        url = deployment.url(port_var, "/-/ready")
        assert http_get(url)[0] == 401
        assert http_get(url, headers={"Authorization": "Basic YWRtaW46d3Jvbmc="})[0] == 401  # admin:wrong
        assert http_get(url, headers=deployment.web_auth(port_var))[0] == 200
        web_config = deployment.prefix / "etc" / name / "web-config.yml"
        assert oct(web_config.stat().st_mode & 0o777) == "0o640"
        assert list(yaml.safe_load(web_config.read_text())["basic_auth_users"]) == ["admin"]
        assert yaml.safe_load(web_config.read_text())["basic_auth_users"]["admin"].startswith("$2b$10$")
    status = _json(deployment.url("alertmanager_port", "/api/v2/status"), deployment.web_auth("alertmanager_port"))
    config = yaml.safe_load(status["config"]["original"])
    agent = next(r for r in config["receivers"] if r["name"] == "gpu-watchdog-agent")
    hook = agent["webhook_configs"][0]
    assert hook["url"] == deployment.url("agent_webhook_port", "/alerts")
    token_file = Path(hook["http_config"]["authorization"]["credentials_file"])
    assert token_file.stat().st_mode & 0o077 == 0
    assert token_file.read_text() == (deployment.prefix / "secrets" / "agent-token").read_text()
    assert len(token_file.read_text()) >= 32


def test_prometheus_has_the_rules_loaded(deployment: Deployment) -> None:
    shipped = sorted(p.name for p in (REPO / "alert_rules").glob("*.rules.yml"))
    installed = sorted(p.name for p in (deployment.prefix / "etc" / "prometheus" / "rules").iterdir())
    assert installed == shipped
    groups = _json(deployment.url("prometheus_port", "/api/v1/rules"), deployment.web_auth("prometheus_port"))
    groups = groups["data"]["groups"]
    assert sorted({Path(g["file"]).name for g in groups}) == shipped
    expected_groups = sum(len(yaml.safe_load((REPO / "alert_rules" / n).read_text())["groups"]) for n in shipped)
    assert len(groups) == expected_groups


def test_prometheus_targets_are_up_with_the_node_label(deployment: Deployment) -> None:
    expected = {"prometheus", "alertmanager"}
    expected |= {"gpu"} if deployment.built["gpu-exporter"] else set()
    expected |= {"slurm"} if deployment.built["slurm-exporter"] else set()
    expected |= {"agent-webhook"} if deployment.built["agent-webhook"] else set()
    url = deployment.url("prometheus_port", "/api/v1/targets")

    def all_up() -> list[dict[str, Any]] | None:
        targets = _json(url, deployment.web_auth("prometheus_port"))["data"]["activeTargets"]
        jobs = {t["labels"]["job"] for t in targets}
        return targets if jobs == expected and all(t["health"] == "up" for t in targets) else None

    try:
        targets = wait_until(all_up, 30, interval=1, what="every target up")
    except TimeoutError:
        pytest.fail(json.dumps(_json(url, deployment.web_auth("prometheus_port"))["data"], indent=1)[:4000])
    assert isinstance(targets, list)
    for target in targets:
        if target["labels"]["job"] == "gpu":
            assert target["labels"]["node"] == NODE


def test_gpu_exporter_serves_simulated_gpus_behind_its_web_config(deployment: Deployment) -> None:
    _need(deployment, "gpu-exporter")
    url = deployment.url("exporters_gpu_port", "/metrics")
    assert http_get(url)[0] == 401
    status, body = http_get(url, headers=deployment.exporter_auth)
    assert status == 200
    assert body.count(b"nvidia_gpu_info{") == 4  # --sim-gpus from slurm_node_gpus


def test_slurm_exporter_sees_the_node(deployment: Deployment) -> None:
    _need(deployment, "slurm-exporter")
    url = deployment.url("exporters_slurm_port", "/metrics")
    assert http_get(url)[0] == 401

    def scrape() -> bytes:
        return http_get(url, headers=deployment.exporter_auth)[1]

    wait_until(lambda: b"slurm_up 1" in scrape(), 30, what="slurm_up 1")
    assert f'node="{NODE}"'.encode() in scrape()


def test_agent_webhook_answers_and_checks_its_token(deployment: Deployment) -> None:
    _need(deployment, "agent-webhook")
    assert http_get(deployment.url("agent_webhook_port", "/healthz"))[0] == 200
    token = (deployment.prefix / "secrets" / "agent-token").read_text()
    request = urllib.request.Request(
        deployment.url("agent_webhook_port", "/alerts"),
        data=b"{}",
        headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        urllib.request.urlopen(request, timeout=5)
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
    assert status == 401
    assert token not in (deployment.prefix / "log" / "agent-webhook.log").read_text()


def test_grafana_files_are_provisioned(deployment: Deployment) -> None:
    grafana = Path(deployment.variables["grafana_provisioning_dir"]).parent
    dashboards = sorted(p.name for p in (REPO / "grafana" / "dashboards").glob("*.json"))
    assert sorted(p.name for p in (grafana / "dashboards").glob("*.json")) == dashboards
    for source in (REPO / "grafana" / "provisioning").glob("*/*.y*ml"):
        shipped = yaml.safe_load(source.read_text())
        copied = yaml.safe_load((grafana / "provisioning" / source.parent.name / source.name).read_text())
        # Rewritten for this deployment: where the dashboards are, where Prometheus is.
        for provider in copied.get("providers", []):
            assert provider["options"]["path"] == str(grafana / "dashboards")
            provider["options"]["path"] = shipped["providers"][0]["options"]["path"]
        for datasource in copied.get("datasources", []):
            if datasource["type"] == "prometheus":
                assert datasource["url"] == deployment.url("prometheus_port")
                # Prometheus has web users: Grafana logs in, reading the password from a file.
                password_file = grafana / "provisioning" / "gpu-watchdog-prometheus-password"
                assert password_file.read_text() == deployment.variables["prometheus_web_users"]["admin"]
                assert oct(password_file.stat().st_mode & 0o777) == "0o640"
                assert datasource.pop("basicAuth") is True and datasource.pop("basicAuthUser") == "admin"
                assert datasource.pop("secureJsonData") == {"basicAuthPassword": f"$__file{{{password_file}}}"}
                datasource["url"] = next(d["url"] for d in shipped["datasources"] if d["type"] == "prometheus")
        assert copied == shipped


def test_no_secret_reaches_the_output(deployment: Deployment) -> None:
    token = (deployment.prefix / "secrets" / "agent-token").read_text()
    passwords = [
        deployment.variables["prometheus_exporter_basic_auth_password"],
        deployment.variables["prometheus_web_users"]["admin"],
        deployment.variables["alertmanager_web_users"]["admin"],
    ]
    key = Path("/etc/munge/munge.key").read_bytes()
    for run in deployment.runs.values():
        assert token not in run.stdout + run.stderr
        assert all(password not in run.stdout + run.stderr for password in passwords)
        assert base64.b64encode(key).decode()[:40] not in run.stdout + run.stderr
    # Nor a command line, a service definition, a log or a config file others can read.
    readable = [
        *(deployment.prefix / "services").glob("*.json"),
        *(deployment.prefix / "log").glob("*.log"),
        deployment.prefix / "etc" / "agent.yml",
        deployment.prefix / "etc" / "prometheus" / "prometheus.yml",
        deployment.prefix / "etc" / "prometheus" / "web-config.yml",
        deployment.prefix / "etc" / "alertmanager" / "web-config.yml",
    ]
    for row in _supervised(deployment):
        readable.append(Path(f"/proc/{row['pid']}/cmdline"))
    for path in readable:
        text = path.read_bytes().decode(errors="replace")
        assert all(password not in text for password in passwords[1:]), path


def test_consumers_log_in_with_password_files(deployment: Deployment) -> None:
    """Prometheus (its alerts, its `alertmanager` and `prometheus` jobs) and the agent authenticate
    with password files of their own users; the password never sits in a config or a URL."""
    config = yaml.safe_load((deployment.prefix / "etc" / "prometheus" / "prometheus.yml").read_text())
    prom_files = deployment.prefix / "etc" / "prometheus"
    alerting = config["alerting"]["alertmanagers"][0]["basic_auth"]
    assert alerting == {"username": "admin", "password_file": str(prom_files / "alertmanager-password")}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["alertmanager"]["basic_auth"] == alerting
    assert jobs["prometheus"]["basic_auth"] == {"username": "admin", "password_file": str(prom_files / "web-password")}
    agent = yaml.safe_load((deployment.prefix / "etc" / "agent.yml").read_text())
    secrets_dir = deployment.prefix / "secrets"
    assert agent["prometheus_basic_auth"] == {
        "username": "admin",
        "password_file": str(secrets_dir / "agent-prometheus-password"),
    }
    assert agent["alertmanager_basic_auth"] == {
        "username": "admin",
        "password_file": str(secrets_dir / "agent-alertmanager-password"),
    }
    for path, owner, secret in (
        (prom_files / "web-password", "prometheus", deployment.variables["prometheus_web_users"]["admin"]),
        (prom_files / "alertmanager-password", "prometheus", deployment.variables["alertmanager_web_users"]["admin"]),
        (
            secrets_dir / "agent-prometheus-password",
            "gpu-watchdog",
            deployment.variables["prometheus_web_users"]["admin"],
        ),
        (
            secrets_dir / "agent-alertmanager-password",
            "gpu-watchdog",
            deployment.variables["alertmanager_web_users"]["admin"],
        ),
    ):
        info = path.stat()
        assert oct(info.st_mode & 0o777) == "0o600", path
        assert pwd.getpwuid(info.st_uid).pw_name == owner, path
        assert path.read_text() == secret


def _cli(*args: str, timeout: float = 60, prefix: Path | None = None) -> str:
    """A walkthrough command as README.md gives it, from the checkout (no --faults flag):
    `gpu-watchdog ARGS...`, or amtool when ARGS start with it. `prefix`: the deployment whose
    etc/agent.yml the CLI reads (make up prints GPU_WATCHDOG_PREFIX=... for a non-default one)."""
    argv = list(args) if args[0] == "amtool" else [str(VENV_BIN / "gpu-watchdog"), *args]
    extra_env = {"GPU_WATCHDOG_PREFIX": str(prefix)} if prefix else None
    run = run_cmd(argv, timeout=timeout, cwd=REPO, extra_env=extra_env)
    assert run.returncode == 0, run.explain()
    return run.stdout


def _query(deployment: Deployment, expr: str) -> list[dict[str, Any]]:
    url = deployment.url("prometheus_port", "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    result: list[dict[str, Any]] = _json(url, deployment.web_auth("prometheus_port"))["data"]["result"]
    return result


def test_readme_walkthrough_an_injected_xid_79_becomes_a_finding(deployment: Deployment) -> None:
    _need(deployment, "gpu-exporter")
    _need(deployment, "agent-webhook")
    xid = 'nvidia_gpu_xid_errors_total{job="gpu",gpu="3",xid="79"}'

    # The deployment is minutes old: its first XID must page (the rule keys on the exporter's
    # first-seen stamp, not on 15 minutes of Prometheus history).
    injected = time.monotonic()
    assert "into .run/sim-faults.yml" in _cli("sim", "inject", "--gpu", "3", "xid", "79")
    assert "gpu: 3" in SIM_FAULTS.read_text()  # the file the deployed exporter reads
    wait_until(lambda: [s["value"][1] for s in _query(deployment, xid)] == ["1"], 60, what="XID counter = 1")

    def firing() -> bool:
        alerts = _json(deployment.url("prometheus_port", "/api/v1/alerts"), deployment.web_auth("prometheus_port"))
        alerts = alerts["data"]["alerts"]
        return any(
            a["labels"]["alertname"] == "GPUXidError" and a["labels"].get("gpu") == "3" and a["state"] == "firing"
            for a in alerts
        )

    wait_until(firing, 90, interval=1, what="GPUXidError firing in Prometheus")
    fired = time.monotonic() - injected
    # Alertmanager has it once Prometheus has sent it (a minute later GPUFellOffBus inhibits it).
    # Alertmanager has web users: amtool logs in with an HTTP client config (docs/ansible.md).
    http_config = deployment.vars_file.parent / "amtool-http.yml"
    http_config.write_text(
        yaml.safe_dump(
            {
                "basic_auth": {
                    "username": "admin",
                    "password_file": str(deployment.prefix / "etc" / "prometheus" / "alertmanager-password"),
                }
            }
        )
    )
    amtool = (
        "amtool",
        "alert",
        f"--alertmanager.url={deployment.url('alertmanager_port')}",
        f"--http.config.file={http_config}",
    )
    wait_until(lambda: "GPUXidError" in _cli(*amtool) or "GPUFellOffBus" in _cli(*amtool), 60, what="amtool alert")

    def findings() -> list[dict[str, Any]]:
        out = _cli("findings", "--alertname", "GPUXidError", "--json", prefix=deployment.prefix)
        return [f for f in json.loads(out) if f["gpu"] == "3"]

    found = wait_until(findings, 90, interval=1, what="a GPUXidError finding")
    to_finding = time.monotonic() - injected
    assert isinstance(found, list) and len(found) == 1, found
    assert "XID 79" in found[0]["summary"] and found[0]["status"] == "firing"
    assert found[0]["recommended_actions"], found[0]
    # The README's plain commands: the CLI finds the agent, its token and Prometheus/Alertmanager
    # in the deployment's agent.yml.
    listed = _cli("findings", prefix=deployment.prefix)
    assert "GPUXidError" in listed and "XID 79" in listed
    answer = _cli("ask", "what is wrong with gpu 3?", prefix=deployment.prefix)
    assert "_Answered by" in answer and "XID 79" in answer, answer
    assert "cleared 1 fault(s)" in _cli("sim", "clear")
    assert "no faults in .run/sim-faults.yml" in _cli("sim", "list")
    print(f"sim inject -> alert firing {fired:.1f}s, -> finding {to_finding:.1f}s (2 s scrape/evaluation)")


def _supervised(deployment: Deployment) -> list[dict[str, Any]]:
    out = subprocess.run([*deployment.supervise, "status"], capture_output=True, text=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines()]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited; whoever adopted it has not reaped it yet


def test_make_down_stops_everything_and_a_second_down_is_a_no_op(deployment: Deployment) -> None:
    rows = _supervised(deployment)
    assert rows and all(r["running"] for r in rows), rows
    status = make(deployment, "status")
    assert status.returncode == 0 and status.stdout.count("running (pid") == len(rows), status.explain()
    pids = [pid for r in rows for pid in (r["pid"], r["keeper_pid"])]
    ports = [v for k, v in deployment.variables.items() if k.endswith("_port")]

    down = make(deployment, "down", timeout=180)
    assert down.returncode == 0, down.explain()
    assert f"stopped {len(rows)} service(s)" in down.stdout, down.stdout
    wait_until(lambda: all(_gone(pid) for pid in pids), 30, what="every service's process gone")
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still answers"
    assert not Path("/run/munge/munged.pid").exists()
    print(f"make down: {down.seconds:.1f}s for {len(rows)} services")

    again = make(deployment, "down")
    assert again.returncode == 0 and "nothing was running" in again.stdout, again.explain()
    after = make(deployment, "status")
    assert after.returncode == 0 and "running" not in after.stdout, after.explain()
