"""provision-pods.yml, scale-pods.yml (RunPod side) and teardown.yml against the fake API."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.runpod_api import FakeRunPod
from tests.runpod.conftest import ANSIBLE_DIR, VENV_BIN

pytestmark = pytest.mark.slow

FAST = {
    "runpod_poll_interval": 0.1,
    "runpod_wait_timeout": 30,
    "runpod_name_prefix": "t",
    "runpod_image": "registry.example/gpu-watchdog-pod:0.1.0",
}


def names(fake: FakeRunPod) -> list[str]:
    return sorted(p["name"] for p in fake.pods())


def test_provision_is_idempotent_and_teardown_safe_to_rerun(
    fake_runpod: FakeRunPod, sdk: FakeRunPod, run_playbook: Any
) -> None:
    extravars = {**FAST, "runpod_workers": 2, "runpod_ssh_public_key": "ssh-ed25519 AAAAC3Nza test"}
    run = run_playbook("provision-pods.yml", extravars=extravars)
    assert run.status == "successful", run.stdout[-4000:]
    assert names(fake_runpod) == ["t-head", "t-worker-1", "t-worker-2"]
    pods = {p["name"]: p for p in fake_runpod.pods()}
    head_env = dict(e.split("=", 1) for e in pods["t-head"]["env"])
    worker_env = dict(e.split("=", 1) for e in pods["t-worker-2"]["env"])
    assert head_env["WATCHDOG_ROLE"] == "head" and head_env["WATCHDOG_NODE_NAME"] == "t-head"
    assert worker_env["WATCHDOG_ROLE"] == "worker" and worker_env["WATCHDOG_NODE_NAME"] == "t-worker-2"
    assert worker_env["WATCHDOG_HEAD_ADDR"] == f"{pods['t-head']['id']}.runpod.internal"
    # Managed pods: only sshd from the entrypoint, state on the volume, no secret in the env.
    for env in (head_env, worker_env):
        assert env["WATCHDOG_SERVICES"] == "sshd" and env["WATCHDOG_STATE_DIR"] == "/workspace/gpu-watchdog"
        assert env["PUBLIC_KEY"] == "ssh-ed25519 AAAAC3Nza test"
        assert not [k for k in env if "MUNGE" in k]
    assert all(p["desiredStatus"] == "RUNNING" for p in pods.values())
    # Created through the REST API with global networking and a volume.
    assert all(p["_fake"]["globalNetworking"] for p in pods.values())
    assert all(p["volumeInGb"] > 0 and p["volumeMountPath"] == "/workspace" for p in pods.values())
    cost = run.result("Cost of the cluster per hour")["ansible_facts"]["runpod_cluster_cost_per_hr"]
    assert float(cost) == pytest.approx(3 * 0.69)

    again = run_playbook("provision-pods.yml", extravars=extravars)
    assert again.status == "successful", again.stdout[-4000:]
    assert "changed=0" in again.stdout.replace(" ", "")
    assert fake_runpod.creations() == 3
    assert "podFindAndDeployOnDemand" not in fake_runpod.operations()

    fake_runpod.control({"start_delay": 0})
    import runpod

    runpod.create_pod("other-keep", "img", "NVIDIA L4")  # another cluster's pod: never touched
    down = run_playbook("teardown.yml", extravars=FAST)
    assert down.status == "successful", down.stdout[-4000:]
    assert names(fake_runpod) == ["other-keep"]
    assert "terminated 3 pod(s)" in down.stdout
    rerun = run_playbook("teardown.yml", extravars=FAST)
    assert rerun.status == "successful", rerun.stdout[-4000:]
    assert "terminated 0 pod(s)" in rerun.stdout


def test_scale_up_adds_missing_workers_and_refuses_blind_scale_down(
    fake_runpod: FakeRunPod, sdk: FakeRunPod, run_playbook: Any
) -> None:
    import runpod

    for name in ("t-head", "t-worker-1"):  # as provision-pods.yml leaves them (tested above)
        runpod.create_pod(name, "img", "NVIDIA GeForce RTX 4090", ports="22/tcp")
    up = run_playbook("scale-pods.yml", extravars={**FAST, "workers": 3})
    assert up.status == "successful", up.stdout[-4000:]
    assert names(fake_runpod) == ["t-head", "t-worker-1", "t-worker-2", "t-worker-3"]
    pods = {p["name"]: p for p in fake_runpod.pods()}
    env = dict(e.split("=", 1) for e in pods["t-worker-3"]["env"])
    assert env["WATCHDOG_HEAD_ADDR"] == f"{pods['t-head']['id']}.runpod.internal"

    # Without a Slurm head in the inventory nothing can be drained: nothing is terminated.
    down = run_playbook("scale-pods.yml", extravars={**FAST, "workers": 1})
    assert down.status == "failed"
    assert "no host in group slurm_head" in down.stdout
    assert len(fake_runpod.pods()) == 4

    bad = run_playbook("scale-pods.yml", extravars={**FAST, "workers": "two"})
    assert bad.status == "failed" and "-e workers=N" in bad.stdout


def test_playbooks_pass_syntax_check(tmp_path: Path) -> None:
    # provision.yml and scale.yml import site.yml (from the Ansible roles); a stand-in keeps
    # this check independent of it.
    work = tmp_path / "ansible"
    shutil.copytree(ANSIBLE_DIR, work)
    if not (work / "site.yml").exists():
        (work / "site.yml").write_text("- name: stand-in\n  hosts: all\n  gather_facts: false\n  tasks: []\n")
    for playbook in ("provision.yml", "scale.yml", "teardown.yml", "provision-pods.yml", "scale-pods.yml"):
        result = subprocess.run(
            [f"{VENV_BIN}/ansible-playbook", "--syntax-check", "-i", "localhost,", playbook],
            cwd=work,
            capture_output=True,
            text=True,
            env={"PATH": VENV_BIN + ":/usr/bin:/bin", "ANSIBLE_CONFIG": str(work / "ansible.cfg")},
            timeout=120,
        )
        assert result.returncode == 0, f"{playbook}: {result.stdout}{result.stderr}"


def test_provision_refuses_to_hand_over_without_the_pods_in_the_inventory(
    fake_runpod: FakeRunPod, run_playbook: Any, tmp_path: Path
) -> None:
    # With a plain inventory (here: just localhost), site.yml must not run: it would configure
    # this machine instead of the pods.
    work = tmp_path / "ansible"
    shutil.copytree(ANSIBLE_DIR, work)
    if not (work / "site.yml").exists():
        (work / "site.yml").write_text("- name: stand-in\n  hosts: all\n  gather_facts: false\n  tasks: []\n")
    run = run_playbook(str(work / "provision.yml"), extravars={**FAST, "runpod_workers": 0})
    assert run.status == "failed"
    assert "no RunPod head pod in the inventory" in run.stdout
    assert names(fake_runpod) == ["t-head"]
