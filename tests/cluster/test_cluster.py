"""A head pod and two GPU worker pods on this machine, end to end (issue: many pods on one machine).

The pods are containers of the image built from pod-image/Dockerfile, created by the RunPod
emulator (the fake API with its container backend) through the runpod_pod module, and configured
by site.yml over SSH through the runpod inventory plugin: the path a RunPod user runs, with only
the API URLs, simulated GPUs and time-compressed rules changed. The tests run in file order on
one cluster (the module fixture), each leaving it as it found it.
"""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

import pytest

from scripts.cluster_client import RunningCluster, wait_for

# The first test's budget includes building the image and provisioning the cluster.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def gpu_targets_by_node(c: RunningCluster) -> dict[str, dict[str, Any]]:
    return {t["labels"]["node"]: t for t in c.targets() if t["labels"].get("job") == "gpu"}


def test_from_nothing_slurm_runs_jobs_on_both_workers_and_prometheus_scrapes_every_pod(
    cluster: RunningCluster,
) -> None:
    workers = [cluster.worker(1)["slurm_node"], cluster.worker(2)["slurm_node"]]
    nodes = wait_for(
        "both workers idle in sinfo",
        lambda: (rows := cluster.sinfo()) and all(rows.get(w, ("",))[0] == "idle" for w in workers) and rows,
        timeout=120,
    )
    assert sorted(nodes) == sorted(workers)
    for worker in workers:
        assert re.fullmatch(r"gpu:[a-z0-9]+:4(\(S:.*\))?", nodes[worker][1]), nodes[worker]

    # Slurm's CPUs and memory are the pod's (the API's 1 vCPU, 95% of 3 GB), not this machine's.
    node_conf = cluster.exec(cluster.head, "scontrol", "show", "node", workers[0]).stdout
    assert "CPUTot=1 " in node_conf and "RealMemory=2918 " in node_conf, node_conf

    run = cluster.exec(cluster.head, "srun", "-N2", "--gres=gpu:1", "hostname", timeout=120)
    assert run.returncode == 0, run.stderr
    pod_ids = {cluster.worker(1)["pod_id"], cluster.worker(2)["pod_id"]}
    assert set(run.stdout.split()) == pod_ids  # a pod's hostname is its id, as on RunPod

    # Every target up, scraped at the pods' internal names; GPU targets labelled by Slurm node.
    def all_up() -> list[dict[str, Any]] | None:
        targets = cluster.targets()
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_for("every Prometheus target up", all_up, timeout=90)
    jobs = {t["labels"]["job"] for t in targets}
    assert {"gpu", "slurm", "prometheus", "alertmanager", "agent-webhook"} <= jobs
    gpu = gpu_targets_by_node(cluster)
    assert sorted(gpu) == sorted(workers)
    for node, target in gpu.items():
        pod_id = next(w["pod_id"] for w in cluster.endpoints["workers"] if w["slurm_node"] == node)
        assert target["scrapeUrl"].startswith(f"http://{pod_id}.runpod.internal:9400/")
    # The GPU exporter's own node label agrees with the target label Prometheus joins on.
    series = cluster.query('count by (node) (nvidia_gpu_info{job="gpu"})')
    assert {s["metric"]["node"]: s["value"][1] for s in series} == {w: "4" for w in workers}


def test_web_uis_need_their_password(cluster: RunningCluster) -> None:
    for name in ("prometheus", "alertmanager"):
        url = cluster.endpoints[name] + ("/api/v1/status/buildinfo" if name == "prometheus" else "/api/v2/status")
        plain = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True, text=True
        )
        assert plain.stdout == "401", f"{name} answered {plain.stdout} without credentials"


def test_xid_on_a_worker_gpu_becomes_exactly_one_finding_naming_that_node_and_gpu(cluster: RunningCluster) -> None:
    worker = cluster.worker(2)
    node = worker["slurm_node"]
    before = {f["id"] for f in cluster.findings()}
    started = time.monotonic()
    inject = cluster.exec(worker["container"], "gpu-watchdog", "sim", "inject", "--gpu", "1", "xid", "79")
    assert inject.returncode == 0, inject.stderr
    try:
        found = wait_for(
            "a GPUXidError finding for the worker's GPU 1",
            lambda: [f for f in cluster.findings() if f["id"] not in before and f["alertname"] == "GPUXidError"],
            timeout=90,
            interval=1,
        )
        elapsed = time.monotonic() - started
        (finding,) = found
        assert (finding["node"], str(finding["gpu"])) == (node, "1"), finding
        assert "79" in finding["summary"], finding
        # No other node or GPU was blamed.
        new = [f for f in cluster.findings() if f["id"] not in before]
        assert {(f["node"], str(f["gpu"])) for f in new} == {(node, "1")}, new
        print(f"XID 79 on {node} GPU 1 -> finding in {elapsed:.1f} s")
    finally:
        cluster.exec(worker["container"], "gpu-watchdog", "sim", "clear")


def test_a_cut_network_pages_for_the_node_and_recovers(cluster: RunningCluster) -> None:
    worker = cluster.worker(1)
    node = worker["slurm_node"]
    before = {f["id"] for f in cluster.findings()}
    cluster.cluster.control({"disconnect": worker["pod_id"]})
    try:

        def node_findings() -> dict[str, dict[str, Any]] | None:
            found = {f["alertname"]: f for f in cluster.findings() if f["id"] not in before and f["node"] == node}
            return found if {"SlurmNodeNotResponding", "GPUExporterDown"} <= set(found) else None

        found = wait_for("SlurmNodeNotResponding and GPUExporterDown findings", node_findings, timeout=240)
        assert all(f["status"] == "firing" for f in found.values())
    finally:
        cluster.cluster.control({"reconnect": worker["pod_id"]})

    def resolved() -> bool:
        current = {f["id"]: f for f in cluster.findings()}
        return all(current[f["id"]]["status"] == "resolved" for f in found.values())

    wait_for("both findings resolved after the reconnect", resolved, timeout=240)
    wait_for("the node idle again", lambda: cluster.sinfo().get(node, ("",))[0] == "idle", timeout=120)


def test_a_stopped_then_resumed_worker_rejoins_slurm_and_prometheus_by_itself(
    cluster: RunningCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runpod

    worker = cluster.worker(2)
    node = worker["slurm_node"]
    env = cluster.cluster.env()
    monkeypatch.setattr(runpod, "api_key", env["RUNPOD_API_KEY"])
    monkeypatch.setenv("RUNPOD_API_BASE_URL", env["RUNPOD_API_BASE_URL"])
    runpod.stop_pod(worker["pod_id"])
    wait_for("the stopped worker's target down", lambda: gpu_targets_by_node(cluster)[node]["health"] == "down", 60)
    # The container (and its disk) is gone; the volume is not.
    assert cluster.exec(worker["container"], "true").returncode != 0
    runpod.resume_pod(worker["pod_id"], 4)
    # No Ansible: the entrypoint finds the configuration on the volume and starts the services.
    wait_for("the resumed worker idle in Slurm", lambda: cluster.sinfo().get(node, ("",))[0] == "idle", 180)
    wait_for("its GPU target up again", lambda: gpu_targets_by_node(cluster)[node]["health"] == "up", 120)


def test_site_yml_again_changes_nothing(cluster: RunningCluster) -> None:
    output = cluster.cluster.playbook("site.yml", quiet=True)
    recap = output[output.rindex("PLAY RECAP") :]
    changed = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", recap, re.M)}
    assert changed and all(v == 0 for v in changed.values()), recap


def test_scale_to_three_workers_joins_slurm_and_prometheus(cluster: RunningCluster) -> None:
    cluster.cluster.playbook("scale.yml", {"workers": 3}, quiet=True)
    cluster.reload()
    assert len(cluster.endpoints["workers"]) == 3
    new = cluster.worker(3)["slurm_node"]
    wait_for("the new worker idle in Slurm", lambda: cluster.sinfo().get(new, ("",))[0] == "idle", 120)
    wait_for("its GPU target up", lambda: gpu_targets_by_node(cluster).get(new, {}).get("health") == "up", 90)


def worker_pods(c: RunningCluster) -> dict[str, dict[str, Any]]:
    """The cluster's worker pods RunPod still lists, by name."""
    prefix = f"{c.cluster.prefix}-worker-"
    return {p["name"]: p for p in c.cluster.pods() if p["name"].startswith(prefix)}


def job_state(c: RunningCluster, job_id: str) -> str:
    out = c.exec(c.head, "squeue", "--noheader", "--jobs", job_id, "--format", "%T").stdout.strip()
    if out:
        return out
    acct = c.exec(c.head, "scontrol", "show", "job", job_id).stdout
    match = re.search(r"JobState=(\S+)", acct)
    return match.group(1) if match else "GONE"


def submit(c: RunningCluster, *args: str, gpus: int = 1) -> str:
    out = c.exec(c.head, "sbatch", "--parsable", f"--gres=gpu:{gpus}", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_node(c: RunningCluster, job_id: str) -> str:
    return c.exec(c.head, "squeue", "--noheader", "--jobs", job_id, "--format", "%N").stdout.strip()


def action_decisions(c: RunningCluster, kind: str) -> list[dict[str, Any]]:
    return [f["action"] for f in c.findings() if (f.get("action") or {}).get("action") == kind]


@pytest.mark.timeout(2700)
def test_agent_on_the_head_scales_down_idle_workers_never_a_busy_one_and_up_from_zero(cluster: RunningCluster) -> None:
    """Actions on: RunPodPodIdle drains then terminates idle workers (never the busy one), down
    to zero; then a GPU job's SlurmGPUQueueBacklog makes the head's agent add a worker that runs it.
    The agent runs scale.yml on the head itself: the playbooks, the inventory and an SSH key that
    site.yml put there, the RunPod API at the emulator's bridge address."""
    started = time.monotonic()

    def phase(what: str) -> None:
        print(f"[agent test] {time.monotonic() - started:6.0f} s: {what}", flush=True)

    nodes = sorted(w["slurm_node"] for w in cluster.endpoints["workers"])
    assert len(nodes) == 3, nodes
    # Every worker busy first, so that no idle alert fired before the actions were on (an
    # alert is decided once: one that fired while actions were off is not acted on later).
    # Each job takes all 4 GPUs of a node, so Slurm puts one on each; not `-w node`: a job
    # that named a node holds the removal of the last one for MinJobAge (slurm_head role).
    submitted = [submit(cluster, "--wrap", "sleep 3000", gpus=4) for _ in nodes]
    # The simulated GPUs show a steady load by default; these jobs use none (as `sleep` would).
    for worker in cluster.endpoints["workers"]:
        for gpu in range(4):
            inject = cluster.exec(
                worker["container"], "gpu-watchdog", "sim", "inject", "--gpu", str(gpu), "utilization", "0"
            )
            assert inject.returncode == 0, inject.stderr
    wait_for("a job on every worker", lambda: all(job_state(cluster, j) == "RUNNING" for j in submitted), 120)
    jobs = {job_node(cluster, j): j for j in submitted}
    assert sorted(jobs) == nodes, jobs
    wait_for("no RunPodPodIdle firing", lambda: not cluster.query('ALERTS{alertname="RunPodPodIdle"}'), 180, 5)
    phase("every worker busy, no idle alert")

    actions = {
        "enabled": True,
        "dry_run": False,
        "min_workers": 0,
        "max_workers": 3,
        "cooldown_seconds": 5,
        "spend_cap_dollars_per_hour": 1000,
        "partitions": ["gpu"],
        "drain_timeout_seconds": 60,
        "playbook_timeout_seconds": 900,
    }
    cluster.cluster.playbook("monitoring.yml", {"agent_webhook_config": {"actions": actions}}, quiet=True)
    phase("actions on")

    busy, idle = nodes[0], nodes[1:]
    for node in idle:
        assert cluster.exec(cluster.head, "scancel", jobs[node]).returncode == 0

    def taken(kind: str) -> list[dict[str, Any]]:
        return [d for d in action_decisions(cluster, kind) if d["outcome"] == "taken"]

    # A decision reaches its finding when its playbook ends: after the pod is gone, site.yml
    # still reconfigures the cluster.
    wait_for(
        f"the idle workers {idle} terminated by the agent, its decisions recorded",
        lambda: set(worker_pods(cluster)) == {busy} and len(taken("scale_down")) >= len(idle),
        1200,
        10,
    )
    assert job_state(cluster, jobs[busy]) == "RUNNING"
    every = [
        {k: d.get(k) for k in ("outcome", "reason", "detail", "remove", "playbook", "decided_at")}
        for d in action_decisions(cluster, "scale_down")
    ]
    downs = taken("scale_down")
    assert sorted(name for d in downs for name in d["remove"]) == idle, every
    assert all(d["playbook"]["status"] == "successful" for d in downs), downs
    # Drained, then gone from Slurm's node list with their pods (site.yml from the head).
    wait_for("Slurm lists only the busy worker", lambda: set(cluster.sinfo()) == {busy}, 120)
    phase(f"idle workers {idle} removed")

    # The last worker's job ends: idle, removed too: zero workers.
    assert cluster.exec(cluster.head, "scancel", jobs[busy]).returncode == 0
    wait_for("zero workers, decided", lambda: not worker_pods(cluster) and len(taken("scale_down")) == 3, 900, 10)
    phase("zero workers")

    # A GPU job with no GPU node: pending, the backlog alert, the agent adds a worker that runs it.
    job = submit(cluster, "--wrap", "hostname")
    wait_for("the job run by a new worker", lambda: job_state(cluster, job) == "COMPLETED", 1200, 10)
    phase("the GPU job ran on a new worker")
    # Its decision is recorded when scale.yml ends, after site.yml has configured the worker
    # (the job can run as soon as its slurmd registers, before the playbook is over).
    wait_for("the scale-up decision recorded", lambda: taken("scale_up"), 600, 10)
    phase("scale-up decision recorded")
    ups = taken("scale_up")
    assert ups and ups[-1]["workers_before"] == 0 and ups[-1]["workers_after"] == 1, ups
    assert set(worker_pods(cluster)) == {f"{cluster.cluster.prefix}-worker-1"}


def test_teardown_twice_leaves_nothing(cluster: RunningCluster) -> None:
    c = cluster.cluster
    c.down()
    c.down()
    left = subprocess.run(
        ["podman", "ps", "--all", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [name for name in left if name.startswith(c.container_prefix)], left
    volumes = subprocess.run(["podman", "volume", "ls", "--format", "{{.Name}}"], capture_output=True, text=True)
    assert not [v for v in volumes.stdout.split() if v.startswith(c.container_prefix)]
    assert subprocess.run(["podman", "network", "exists", c.network]).returncode != 0
