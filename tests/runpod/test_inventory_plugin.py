"""The runpod inventory plugin through `ansible-inventory --list`, against the fake API."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import runpod
import yaml

from tests.fakes.runpod_api import DEFAULT_API_KEY, FakeRunPod
from tests.runpod.conftest import ANSIBLE_DIR, VENV_BIN

pytestmark = pytest.mark.slow


def unwrap(value: Any) -> Any:
    """ansible-inventory marks strings from plugins as untrusted: {"__ansible_unsafe": "..."}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def inventory_list(config: Path, fake: FakeRunPod, key: str = DEFAULT_API_KEY) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        RUNPOD_API_BASE_URL=fake.url,
        RUNPOD_API_KEY=key,
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        PATH=os.pathsep.join([VENV_BIN, env.get("PATH", "")]),
    )
    return subprocess.run(
        [str(Path(VENV_BIN) / "ansible-inventory"), "-i", str(config), "--list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pods_grouped_with_connection_vars(fake_runpod: FakeRunPod, sdk: FakeRunPod, tmp_path: Path) -> None:
    fake_runpod.control({"start_delay": 0})
    head = runpod.create_pod("gw-head", "img", "NVIDIA L4", ports="22/tcp,9400/http")
    tagged = runpod.create_pod("gw-ctl", "img", "NVIDIA L4", ports="22/tcp", env={"WATCHDOG_ROLE": "head"})
    worker = runpod.create_pod("gw-worker-1", "img", "NVIDIA GeForce RTX 4090", gpu_count=2, ports="22/tcp")
    stopped = runpod.create_pod("gw-worker-2", "img", "NVIDIA L4", ports="22/tcp")
    runpod.stop_pod(stopped["id"])
    fake_runpod.control({"start_delay": 3600})
    runpod.create_pod("gw-worker-3", "img", "NVIDIA L4", ports="22/tcp")  # still starting
    runpod.create_pod("other-head", "img", "NVIDIA L4", ports="22/tcp")  # another prefix
    time.sleep(0.05)

    config = tmp_path / "cluster.runpod.yml"
    config.write_text("plugin: runpod\nname_prefix: gw-\nkeyed_groups:\n  - key: runpod_gpu_type\n    prefix: gpu\n")
    result = inventory_list(config, fake_runpod)
    assert result.returncode == 0, result.stderr
    inv = unwrap(json.loads(result.stdout))
    hostvars = inv["_meta"]["hostvars"]

    assert sorted(inv["slurm_head"]["hosts"]) == ["gw-ctl", "gw-head"]
    assert sorted(inv["monitoring"]["hosts"]) == ["gw-ctl", "gw-head"]
    assert inv["slurm_workers"]["hosts"] == ["gw-worker-1"]
    assert sorted(inv["runpod_not_ready"]["hosts"]) == ["gw-worker-2", "gw-worker-3"]
    assert "other-head" not in hostvars
    assert sorted(inv["gpu_RTX_4090"]["hosts"]) == ["gw-worker-1"]

    pods = {p["id"]: p for p in fake_runpod.pods()}
    ssh = next(p for p in pods[head["id"]]["runtime"]["ports"] if p["privatePort"] == 22 and p["isIpPublic"])
    hv = hostvars["gw-head"]
    assert (hv["ansible_host"], hv["ansible_port"], hv["ansible_user"]) == ("127.0.0.1", ssh["publicPort"], "root")
    assert hv["runpod_id"] == head["id"] and hv["runpod_internal_dns"] == f"{head['id']}.runpod.internal"
    assert hv["runpod_role"] == "head" and hv["runpod_status"] == "RUNNING"
    assert hostvars["gw-ctl"]["runpod_role"] == "head" and hostvars["gw-ctl"]["runpod_id"] == tagged["id"]
    assert hostvars["gw-worker-1"]["runpod_gpu_count"] == 2
    # What the Slurm roles read: node name = pod name (the image's slurmd -N), reached by DNS.
    assert hostvars["gw-worker-1"]["slurm_node_name"] == "gw-worker-1"
    assert hostvars["gw-worker-1"]["slurm_node_address"] == f"{worker['id']}.runpod.internal"
    assert hostvars["gw-worker-1"]["slurm_node_gpus"] == 2
    assert hostvars["gw-worker-1"]["slurm_node_gpu_type"] == "rtx4090"
    # A pod's CPUs and memory are what the API rents (the fake: 16 vCPUs and 62 GB per GPU), not
    # the facts a container shows (the host's); Slurm gets 95% of the memory.
    assert hostvars["gw-worker-1"]["slurm_node_cpus"] == 32
    assert hostvars["gw-worker-1"]["slurm_node_memory_mb"] == int(124 * 1024 * 0.95)
    # Prometheus scrapes (and reaches Alertmanager) over global networking, not the SSH mapping.
    assert hostvars["gw-worker-1"]["gpu_watchdog_scrape_host"] == f"{worker['id']}.runpod.internal"
    assert hostvars["gw-head"]["gpu_watchdog_scrape_host"] == f"{head['id']}.runpod.internal"
    assert hostvars["gw-worker-1"]["runpod_cost_per_hr"] == pytest.approx(2 * 0.34)
    assert hostvars["gw-worker-1"]["runpod_id"] == worker["id"]
    assert "ansible_host" not in hostvars["gw-worker-2"] and hostvars["gw-worker-2"]["runpod_status"] == "EXITED"


def test_bad_key_is_a_clear_parse_error(fake_runpod: FakeRunPod, tmp_path: Path) -> None:
    config = tmp_path / "x.runpod.yml"
    config.write_text("plugin: runpod\n")
    result = inventory_list(config, fake_runpod, key="rpa_BADKEY_1234567890abcdef")
    combined = result.stdout + result.stderr
    assert "RunPod rejected the API key" in combined, combined
    assert "rpa_BADKEY_1234567890abcdef" not in combined


def test_the_heads_inventory_reaches_pods_at_their_internal_name_on_port_22(
    fake_runpod: FakeRunPod, sdk: FakeRunPod, tmp_path: Path
) -> None:
    """The agent_webhook role's default inventory for a head that runs scale.yml itself,
    written as the role writes it (to_nice_yaml): compose must replace the public NAT port."""
    fake_runpod.control({"start_delay": 0})
    worker = runpod.create_pod("gw-worker-1", "img", "NVIDIA L4", ports="22/tcp")
    defaults = yaml.safe_load((ANSIBLE_DIR / "roles/agent_webhook/defaults/main.yml").read_text())
    inventory = {**defaults["agent_webhook_actions_inventory"], "name_prefix": "gw-", "ssh_common_args": "-o X=y"}
    config = tmp_path / "cluster.runpod.yml"
    config.write_text(yaml.safe_dump(inventory))
    result = inventory_list(config, fake_runpod)
    assert result.returncode == 0, result.stderr
    hv = unwrap(json.loads(result.stdout))["_meta"]["hostvars"]["gw-worker-1"]
    assert (hv["ansible_host"], hv["ansible_port"]) == (f"{worker['id']}.runpod.internal", 22), hv
