"""scale-pods.yml scale-down against a real private Slurm cluster and the fake RunPod API.

Worker pods are mapped onto the cluster's nodes: t-worker-2 -> the real node (running a job),
t-worker-3 -> an idle node. Scaling to one worker must drain both, terminate only the idle
one's pod, keep the busy one (drained) and fail naming it; once its job is gone, a re-run
terminates it too.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest
import runpod

from tests.fakes.runpod_api import FakeRunPod
from tests.harness.slurm import SlurmCluster, wait_for_job_state
from tests.runpod.conftest import drained_at

pytestmark = pytest.mark.slow


def test_scale_down_drains_first_and_never_terminates_a_busy_node(
    cluster: SlurmCluster, sdk: FakeRunPod, run_playbook: Any
) -> None:
    sdk.control({"start_delay": 0})
    for name in ("t-head", "t-worker-1", "t-worker-2", "t-worker-3"):
        runpod.create_pod(name, "img", "NVIDIA L4", ports="22/tcp")
    real_node, idle_node = cluster.hostname, cluster.fake_nodes[0]
    job = cluster.sbatch("-w", real_node, wrap="sleep 600")
    wait_for_job_state(cluster, job, "RUNNING")

    inventory = f"[slurm_head]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    extravars = {
        "runpod_name_prefix": "t",
        "runpod_poll_interval": 0.1,
        "workers": 1,
        "scale_slurm_node_names": {"t-worker-2": real_node, "t-worker-3": idle_node},
        "scale_slurm_environment": {"SLURM_CONF": str(cluster.conf)},
        "scale_drain_timeout": 3,
        "scale_drain_poll": 1,
    }
    run = run_playbook("scale-pods.yml", extravars=extravars, inventory=inventory)

    assert run.status == "failed"
    assert "not terminated, their Slurm nodes still run jobs" in run.stdout and "t-worker-2" in run.stdout
    assert sorted(p["name"] for p in sdk.pods()) == ["t-head", "t-worker-1", "t-worker-2"]
    (gone,) = sdk.state()["terminated"]
    assert gone["name"] == "t-worker-3"
    # Both drained; the idle node's drain came before its pod was terminated.
    assert cluster.node_state(real_node).startswith(("drain", "drng", "mixed")), cluster.node_state(real_node)
    assert cluster.node_state(idle_node).startswith("drain"), cluster.node_state(idle_node)
    assert drained_at(cluster, idle_node) <= gone["t"]
    assert cluster.run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() == "RUNNING"
    assert sdk.operations().count("podTerminate") == 1

    cluster.run(["scancel", job])
    time.sleep(0.5)
    again = run_playbook("scale-pods.yml", extravars=extravars, inventory=inventory)
    assert again.status == "successful", again.stdout[-4000:]
    assert sorted(p["name"] for p in sdk.pods()) == ["t-head", "t-worker-1"]
    last = sdk.state()["terminated"][-1]
    assert last["name"] == "t-worker-2"
    assert drained_at(cluster, real_node) <= last["t"]
