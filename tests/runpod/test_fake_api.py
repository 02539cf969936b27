"""The fake RunPod API, driven by the real `runpod` SDK (1.12) through RUNPOD_API_BASE_URL."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import runpod
from runpod import error as runpod_error

from tests.fakes.runpod_api import (
    CAPACITY_ERROR,
    DEFAULT_API_KEY,
    FakeRunPod,
    GraphQLSyntaxError,
    parse_arguments,
)
from tests.harness.processes import ProcessManager, free_port, http_get

L4 = "NVIDIA L4"


def post_control(url: str, changes: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/_control", data=json.dumps(changes).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def test_parse_arguments_reads_the_sdks_inlined_input() -> None:
    query = (
        'mutation { podFindAndDeployOnDemand( input: { name: "a \\"b\\" \\\\ c", cloudType: SECURE, '
        'gpuCount: 2, supportPublicIp: true, dataCenterId: null, env: [{ key: "K", value: "V" }], '
        "minDownload: 1.5 } ) { id } }"
    )
    args = parse_arguments(query, "podFindAndDeployOnDemand")["input"]
    assert args == {
        "name": 'a "b" \\ c',
        "cloudType": "SECURE",
        "gpuCount": 2,
        "supportPublicIp": True,
        "dataCenterId": None,
        "env": [{"key": "K", "value": "V"}],
        "minDownload": 1.5,
    }
    with pytest.raises(GraphQLSyntaxError):
        parse_arguments('mutation { podStop(input: { podId: "x }) { id } }', "podStop")


def test_pod_lifecycle_through_the_sdk(sdk: FakeRunPod) -> None:
    created = runpod.create_pod(
        "gw-head", "img:1", L4, cloud_type="COMMUNITY", gpu_count=2, ports="22/tcp,9400/http", env={"A": "1"}
    )
    assert set(created) >= {"id", "imageName", "env", "machineId", "machine"}
    pod = runpod.get_pod(created["id"])
    assert pod["desiredStatus"] == "CREATED" and pod["runtime"] is None
    assert pod["costPerHr"] == pytest.approx(2 * 0.28)
    time.sleep(0.35)
    pod = runpod.get_pod(created["id"])
    assert pod["desiredStatus"] == "RUNNING"
    ports = {(p["privatePort"], p["isIpPublic"]): p for p in pod["runtime"]["ports"]}
    assert ports[(22, True)]["ip"] == "127.0.0.1" and ports[(22, True)]["type"] == "tcp"
    assert ports[(9400, False)]["type"] == "http"
    assert pod["env"] == ["A=1"] and pod["machine"]["gpuDisplayName"] == "L4"
    assert [p["id"] for p in runpod.get_pods()] == [created["id"]]

    assert runpod.stop_pod(created["id"])["desiredStatus"] == "EXITED"
    assert runpod.get_pod(created["id"])["runtime"] is None
    assert runpod.resume_pod(created["id"], 2)["desiredStatus"] == "RESTARTING"
    assert runpod.terminate_pod(created["id"]) is None
    assert runpod.get_pod(created["id"]) is None and runpod.get_pods() == []
    with pytest.raises(runpod_error.QueryError, match="pod not found"):
        runpod.terminate_pod(created["id"])
    assert sdk.operations()[:2] == ["gpuTypes", "podFindAndDeployOnDemand"]


def test_capacity_auth_unknown_gpu_and_injected_errors(sdk: FakeRunPod) -> None:
    sdk.set_capacity(L4, False)
    with pytest.raises(runpod_error.QueryError) as excinfo:
        runpod.create_pod("gw-w", "img", L4)
    assert str(excinfo.value) == CAPACITY_ERROR
    sdk.set_capacity(L4, True)
    runpod.create_pod("gw-w", "img", L4)

    with pytest.raises(ValueError, match="No GPU found"):
        runpod.create_pod("gw-w", "img", "NVIDIA Nope")

    runpod.api_key = "rpa_wrong"
    with pytest.raises(runpod_error.AuthenticationError):
        runpod.get_pods()
    runpod.api_key = DEFAULT_API_KEY

    sdk.control({"inject": {"op": "myself", "status": 429, "message": "rate limited", "count": 1}})
    with pytest.raises(runpod_error.QueryError, match="rate limited"):
        runpod.get_pods()
    assert len(runpod.get_pods()) == 1  # one failure only


def test_http_control_state_and_bad_requests(sdk: FakeRunPod) -> None:
    state = post_control(sdk.url, {"start_delay": 0, "capacity": {L4: False}})
    assert state["config"]["no_capacity"] == [L4] and state["config"]["start_delay"] == 0
    status, body = http_get(f"{sdk.url}/_state")
    assert status == 200 and json.loads(body)["pods"] == []
    req = urllib.request.Request(f"{sdk.url}/_control", data=b"[1]", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(req, timeout=5)
    assert excinfo.value.code == 400


def test_runs_as_a_process_with_state_kept_in_a_file(
    procs: ProcessManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    state_file = tmp_path / "runpod-state.json"
    argv = [sys.executable, "-m", "tests.fakes.runpod_api", "--port", str(port), "--state", str(state_file)]
    argv += ["--start-delay", "0"]
    repo = Path(__file__).resolve().parents[2]
    proc = procs.start("fake-runpod", argv, cwd=repo)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/_state")
    monkeypatch.setenv("RUNPOD_API_BASE_URL", url)
    monkeypatch.setattr(runpod, "api_key", DEFAULT_API_KEY)
    pod_id = runpod.create_pod("gw-head", "img", L4, ports="22/tcp")["id"]
    assert json.loads(state_file.read_text())["pods"][0]["id"] == pod_id

    proc.stop()
    proc = procs.start("fake-runpod", argv, cwd=repo)
    proc.wait_http(f"{url}/_state")
    assert runpod.get_pod(pod_id)["desiredStatus"] == "RUNNING"  # the pod survived the restart
