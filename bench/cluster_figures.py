#!/usr/bin/env python3
"""Figures of the emulated RunPod cluster (make cluster-up), on this machine.

    python bench/cluster_figures.py [--workers 2] [--faults 6] [--cpu-seconds 60] [--keep]

Prints: the cluster-up wall time (image already built, or built here: both are reported);
injection -> finding for XID 79 on the workers' simulated GPUs (p50/p95 over --faults faults,
each on another GPU, one at a time, cleared and resolved in between); and the CPU the head's
Prometheus and agent use (share of one core over --cpu-seconds) with the pods idle.

It deploys the real rules and Alertmanager config (no time compression) with the cluster's
intervals: gpu-exporter collects every 2 s, Prometheus scrapes and evaluates every 5 s, and
Alertmanager's critical route waits group_wait 10 s; GPUXidError has no `for:`. Those three
decide the injection -> finding time.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.cluster import Cluster  # noqa: E402
from scripts.cluster_client import RunningCluster, wait_for  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def cpu_ticks(c: RunningCluster, service: str) -> tuple[int, int]:
    """(utime+stime of the service's process in clock ticks, ticks per second) inside the head."""
    status = c.exec(
        c.head, "python3", "/usr/local/bin/gw-supervise", "--run-dir", "/opt/gpu-watchdog/run", "status", service
    )
    pid = json.loads(status.stdout.splitlines()[0])["pid"]
    stat = c.exec(c.head, "cat", f"/proc/{pid}/stat").stdout
    fields = stat.rsplit(")", 1)[1].split()
    hz = int(c.exec(c.head, "getconf", "CLK_TCK").stdout.strip() or 100)
    return int(fields[11]) + int(fields[12]), hz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--faults", type=int, default=6)
    parser.add_argument("--cpu-seconds", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="gw-bench-cluster-"))
    cluster = Cluster(state_dir=state, prefix=f"gwb{secrets.token_hex(2)}")
    started = time.monotonic()
    try:
        endpoints = cluster.up(workers=args.workers, gpus=4)
        up_seconds = time.monotonic() - started
        c = RunningCluster(cluster, endpoints)
        wait_for("every worker idle", lambda: all(s == "idle" for s, _ in c.sinfo().values()), 180)

        times: list[float] = []
        for n in range(args.faults):
            worker = c.worker(n % args.workers + 1)
            gpu = str(n // args.workers % 4)
            before = {f["id"] for f in c.findings()}
            t0 = time.monotonic()
            c.exec(worker["container"], "gpu-watchdog", "sim", "inject", "--gpu", gpu, "xid", "79")
            wait_for(
                f"a finding for {worker['slurm_node']} GPU {gpu}",
                lambda w=worker, g=gpu, b=before: [
                    f for f in c.findings() if f["id"] not in b and f["node"] == w["slurm_node"] and str(f["gpu"]) == g
                ],
                timeout=180,
                interval=0.5,
            )
            times.append(time.monotonic() - t0)
            print(f"  fault {n + 1}: XID 79 on {worker['slurm_node']} GPU {gpu} -> finding in {times[-1]:.1f} s")
            c.exec(worker["container"], "gpu-watchdog", "sim", "clear")

        before_ticks = {s: cpu_ticks(c, s) for s in ("prometheus", "agent-webhook")}
        time.sleep(args.cpu_seconds)
        cpu = {}
        for service, (ticks, hz) in before_ticks.items():
            after, _ = cpu_ticks(c, service)
            cpu[service] = (after - ticks) / hz / args.cpu_seconds * 100

        pods = len(c.endpoints["workers"]) + 1
        print(f"\ncluster: head + {args.workers} GPU workers ({args.workers * 4} simulated GPUs), {pods} pods")
        print(f"cluster-up wall time: {up_seconds:.0f} s (image build included when its inputs changed)")
        print(
            f"injection -> finding over {len(times)} XID faults: p50 {statistics.median(times):.1f} s, "
            f"p95 {percentile(times, 0.95):.1f} s, min {min(times):.1f} s, max {max(times):.1f} s"
        )
        for service, share in cpu.items():
            print(f"head {service} CPU over {args.cpu_seconds:.0f} s: {share:.2f}% of one core")
        return 0
    finally:
        if not args.keep:
            cluster.down()
            subprocess.run(["rm", "-rf", str(state)], check=False)


if __name__ == "__main__":
    sys.exit(main())
