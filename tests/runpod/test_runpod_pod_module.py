"""The runpod_pod module through ansible-runner, against the fake API with the real SDK."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fakes.runpod_api import CAPACITY_ERROR, DEFAULT_API_KEY, FakeRunPod

pytestmark = pytest.mark.slow

L4 = "NVIDIA L4"
RTX4090 = "NVIDIA GeForce RTX 4090"
A100 = "NVIDIA A100 80GB PCIe"


def playbook(*tasks: str) -> str:
    body = "\n".join(tasks)
    return f"""
- hosts: localhost
  gather_facts: false
  tasks:
{body}
"""


def pod_task(title: str, register: str | None = None, ignore_errors: bool = False, **params: Any) -> str:
    lines = [f"    - name: {title}", "      runpod_pod:"]
    params.setdefault("poll_interval", 0.1)
    for key, value in params.items():
        lines.append(f"        {key}: {json.dumps(value)}")  # JSON is YAML
    if register:
        lines.append(f"      register: {register}")
    if ignore_errors:
        lines.append("      ignore_errors: true")
    if "check_mode" in title:
        lines.append("      check_mode: true")
    return "\n".join(lines)


def test_lifecycle_create_idempotent_check_stop_resume_terminate(fake_runpod: FakeRunPod, run_playbook: Any) -> None:
    base = {
        "name": "gw-head",
        "image": "ghcr.io/x/pod:1",
        "gpu_type": L4,
        "gpu_count": 2,
        "cloud_type": "SECURE",
        "ports": ["22/tcp", "9400/http"],
        "env": {"WATCHDOG_ROLE": "head", "MUNGE_KEY": "c2VjcmV0LW11bmdlLWtleQ==", "NOTE": 'has "quotes"'},
    }
    run = run_playbook(
        playbook(
            pod_task("create check_mode", **base),
            pod_task("create", **base),
            pod_task("again", **base),
            pod_task("stop check_mode", **{**base, "state": "stopped"}),
            pod_task("stop", **{**base, "state": "stopped"}),
            pod_task("stop again", **{**base, "state": "stopped"}),
            pod_task("present keeps it stopped", **base),
            pod_task("resume", **{**base, "state": "running"}),
            pod_task("remove check_mode", name="gw-head", state="absent"),
            pod_task("remove", name="gw-head", state="absent"),
            pod_task("remove again", name="gw-head", state="absent"),
        )
    )
    assert run.status == "successful", run.stdout[-4000:]

    would = run.result("create check_mode")
    assert would["changed"] is True and would["status"] == "WOULD_CREATE" and would["id"] is None

    created = run.result("create")
    assert created["changed"] is True
    assert created["status"] == "RUNNING" and created["pod"]["ready"] is True
    assert created["cost_per_hr"] == pytest.approx(2 * 0.43)  # SECURE L4 price x 2 GPUs
    assert created["public_ip"] == "127.0.0.1"
    assert created["internal_dns"] == f"{created['id']}.runpod.internal"
    assert created["port_map"]["22/tcp"]["public"] is True and created["port_map"]["22/tcp"]["port"] > 1024
    assert created["pod"]["ssh"] == {"host": "127.0.0.1", "port": created["port_map"]["22/tcp"]["port"]}
    assert created["port_map"]["9400/http"]["url"] == f"https://{created['id']}-9400.proxy.runpod.net"
    assert created["gpu_type_used"] == L4

    again = run.result("again")
    assert again["changed"] is False and again["id"] == created["id"]

    assert run.result("stop check_mode")["changed"] is True
    stopped = run.result("stop")
    assert stopped["changed"] is True and stopped["status"] == "EXITED"
    assert run.result("stop again")["changed"] is False
    kept = run.result("present keeps it stopped")
    assert kept["changed"] is False and kept["status"] == "EXITED"
    resumed = run.result("resume")
    assert resumed["changed"] is True and resumed["status"] == "RUNNING" and resumed["pod"]["ready"]

    assert run.result("remove check_mode")["changed"] is True
    removed = run.result("remove")
    assert removed["changed"] is True and removed["terminated"] == [created["id"]]
    again_removed = run.result("remove again")
    assert again_removed["changed"] is False and again_removed["status"] == "ABSENT"

    # One creation in all (check mode created nothing), what was asked for reached the API,
    # and the munge key never reached the output.
    ops = fake_runpod.operations()
    assert fake_runpod.creations() == 1 and ops.count("restCreatePod") == 1
    assert ops.count("podStop") == 1 and ops.count("podResume") == 1 and ops.count("podTerminate") == 1
    (terminated,) = fake_runpod.state()["terminated"]
    assert terminated["name"] == "gw-head"
    assert "c2VjcmV0LW11bmdlLWtleQ==" not in run.all_text()


def test_created_pod_carries_its_settings(fake_runpod: FakeRunPod, run_playbook: Any) -> None:
    run = run_playbook(
        playbook(
            pod_task(
                "create",
                name="gw-worker-1",
                image="img:2",
                gpu_type=RTX4090,
                ports=["22/tcp"],
                env={"WATCHDOG_ROLE": "worker", "QUOTED": 'a "b" \\ c'},
                volume_gb=20,
                container_disk_gb=50,
                network_volume_id="vol123",
                wait=False,
            )
        )
    )
    assert run.status == "successful", run.stdout[-4000:]
    (pod,) = fake_runpod.pods()
    assert pod["name"] == "gw-worker-1" and pod["imageName"] == "img:2"
    assert pod["volumeInGb"] == 20 and pod["containerDiskInGb"] == 50 and pod["ports"] == "22/tcp"
    assert 'QUOTED=a "b" \\ c' in pod["env"] and "WATCHDOG_ROLE=worker" in pod["env"]
    assert pod["_fake"]["gpuTypeId"] == RTX4090 and pod["_fake"]["networkVolumeId"] == "vol123"
    # Global networking is on by default: created through RunPod's REST API, which has the field.
    assert pod["_fake"]["globalNetworking"] is True and pod["volumeMountPath"] == "/workspace"
    assert fake_runpod.operations().count("restCreatePod") == 1
    assert "podFindAndDeployOnDemand" not in fake_runpod.operations()
    # wait: false returns at once, before the pod is up.
    assert run.result("create")["status"] == "CREATED"


def test_without_global_networking_the_sdk_creates(fake_runpod: FakeRunPod, run_playbook: Any) -> None:
    run = run_playbook(
        playbook(pod_task("create", name="gw-solo", image="img:2", gpu_type=L4, global_networking=False, wait=False))
    )
    assert run.status == "successful", run.stdout[-4000:]
    (pod,) = fake_runpod.pods()
    assert pod["_fake"]["globalNetworking"] is False
    assert fake_runpod.operations().count("podFindAndDeployOnDemand") == 1
    assert "restCreatePod" not in fake_runpod.operations()


def test_capacity_error_reported_then_fallback_used(fake_runpod: FakeRunPod, run_playbook: Any) -> None:
    fake_runpod.set_capacity(L4, False)
    fake_runpod.set_capacity(RTX4090, False)
    base = {"name": "gw-worker-1", "image": "img:1", "gpu_type": L4}
    run = run_playbook(
        playbook(
            pod_task("no fallback", ignore_errors=True, **base),
            pod_task("fallbacks", gpu_type_fallbacks=[RTX4090, A100], **base),
        )
    )
    assert run.status == "successful", run.stdout[-4000:]
    assert "no fallback" in run.failed
    failed = run.result("no fallback")
    assert "no capacity for pod gw-worker-1" in failed["msg"] and L4 in failed["msg"]
    assert CAPACITY_ERROR in failed["msg"]
    assert failed["capacity_errors"] == {L4: CAPACITY_ERROR}

    used = run.result("fallbacks")
    assert used["changed"] is True and used["gpu_type_used"] == A100
    assert set(used["capacity_errors"]) == {L4, RTX4090}
    (pod,) = fake_runpod.pods()
    assert pod["_fake"]["gpuTypeId"] == A100


def test_wait_timeout_fails_with_last_status(fake_runpod: FakeRunPod, run_playbook: Any) -> None:
    fake_runpod.control({"start_delay": 3600})
    run = run_playbook(
        playbook(pod_task("create", name="gw-slow", image="img:1", gpu_type=L4, wait_timeout=1, poll_interval=0.2))
    )
    assert run.status == "failed"
    msg = run.result("create")["msg"]
    assert "did not reach RUNNING within 1s" in msg and "last status: CREATED" in msg, msg


def test_wrong_or_missing_key_fails_clearly_without_leaking(fake_runpod: FakeRunPod, run_playbook: Any) -> None:
    wrong_key = "rpa_WRONGKEY_abcdefghijklmnop0123"
    run = run_playbook(
        playbook(pod_task("create", name="gw-x", image="img:1", gpu_type=L4)), envvars={"RUNPOD_API_KEY": wrong_key}
    )
    assert run.status == "failed"
    msg = run.result("create")["msg"]
    assert "RunPod rejected the API key" in msg and "HTTP 401" in msg, msg
    assert wrong_key not in run.all_text()
    assert fake_runpod.pods() == []

    # The key as a parameter is no_log: masked everywhere even when the task fails.
    run = run_playbook(
        playbook(pod_task("create", name="gw-x", image="img:1", gpu_type=L4, api_key=wrong_key)),
        envvars={"RUNPOD_API_KEY": DEFAULT_API_KEY},
    )
    assert run.status == "failed"
    assert wrong_key not in run.all_text()

    run = run_playbook(
        playbook(pod_task("create", name="gw-x", image="img:1", gpu_type=L4)), envvars={"RUNPOD_API_KEY": ""}
    )
    assert "no RunPod API key" in run.result("create")["msg"]


def test_unknown_gpu_type_and_duplicate_names(sdk: FakeRunPod, run_playbook: Any) -> None:
    import runpod

    for _ in range(2):  # pod names are not unique on RunPod
        runpod.create_pod("gw-dup", "img", L4)  # the test process talks to the fake directly
    run = run_playbook(
        playbook(
            pod_task("unknown gpu", ignore_errors=True, name="gw-y", image="img:1", gpu_type="NVIDIA Nope"),
            pod_task("duplicate", ignore_errors=True, name="gw-dup", image="img", gpu_type=L4),
            pod_task("remove both", name="gw-dup", state="absent"),
            pod_task("stop a missing pod", ignore_errors=True, name="gw-none", state="stopped"),
            pod_task("bad port", ignore_errors=True, name="gw-z", image="i", gpu_type=L4, ports=["22"]),
        ),
    )
    assert "pod gw-none does not exist" in run.result("stop a missing pod")["msg"]
    assert "ports must look like 22/tcp" in run.result("bad port")["msg"]
    assert "No GPU found" in run.result("unknown gpu")["msg"]
    assert "2 pods are named gw-dup" in run.result("duplicate")["msg"]
    assert len(run.result("remove both")["terminated"]) == 2
    assert sdk.pods() == []
