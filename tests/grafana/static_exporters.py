"""Stand-in GPU and Slurm exporters at the wire: Prometheus text with the names and labels of
issues #3 and #4, served by aiohttp on a loopback port, with faults that can be injected.

Used by the dashboard query test only while the real exporters are not on main; see
tests/grafana/test_queries.py for which one a run used.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.harness.processes import LOOPBACK, free_port

GPUS = 4
GPU_NODE = "gpu-node-1"
# NVML index -> device minor number (N of /dev/nvidiaN), what Slurm's GRES IDX is.
_MINOR = {0: 1, 1: 0}
FAKE_NODES = ("fake-node-1", "fake-node-2")
THROTTLE = ("idle", "power_cap", "hw_slowdown", "sw_thermal", "thermal", "hw_power_brake")


@dataclass
class Faults:
    xid: dict[int, int] = field(default_factory=dict)  # gpu -> code
    lost: set[int] = field(default_factory=set)
    throttle: dict[int, str] = field(default_factory=dict)
    utilization: dict[int, float] = field(default_factory=dict)
    ecc_dbe: set[int] = field(default_factory=set)
    row_remap_failure: set[int] = field(default_factory=set)
    processes: dict[int, tuple[int, str]] = field(default_factory=dict)  # gpu -> (pid, job id)


def _line(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value}" if inner else f"{name} {value}"


class StaticExporters:
    """GPU exposition at /gpu (one node, 4 GPUs), Slurm exposition at /slurm."""

    def __init__(self) -> None:
        self.port = free_port()
        self.faults = Faults()
        self.started = time.time()
        self._xid_first_seen: dict[tuple[int, int], float] = {}  # (gpu, code) -> Unix time, as the exporter
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> StaticExporters:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/gpu", self._gpu)
        app.router.add_get("/slurm", self._slurm)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _gpu(self, request: web.Request) -> web.Response:
        return web.Response(text="\n".join(self.gpu_lines()) + "\n", content_type="text/plain")

    async def _slurm(self, request: web.Request) -> web.Response:
        return web.Response(text="\n".join(self.slurm_lines()) + "\n", content_type="text/plain")

    # -- GPU exporter (issue #3) ------------------------------------------------------------

    def gpu_lines(self) -> Iterator[str]:
        t = time.time() - self.started
        f = self.faults
        for gpu in range(GPUS):
            g = {"gpu": str(gpu), "uuid": f"GPU-0000000{gpu}"}
            yield _line(
                "nvidia_gpu_info",
                {
                    **g,
                    "name": "NVIDIA H100 80GB HBM3",
                    "pci_bus_id": f"00000000:0{gpu}:00.0",
                    "driver_version": "550.90.07",
                    "cuda_version": "12.4",
                    "mig_mode": "disabled",
                    # GPUs 0 and 1 swapped, as the sim backend does: the driver's probe order
                    # is not PCI order on every node, and joins must go through it.
                    "minor_number": str(_MINOR.get(gpu, gpu)),
                },
                1,
            )
            up = 0 if gpu in f.lost else 1
            yield _line("nvidia_gpu_up", g, up)
            if not up:
                continue
            util = f.utilization.get(gpu, 0.6 + 0.05 * gpu)
            yield _line("nvidia_gpu_utilization_ratio", g, util)
            yield _line("nvidia_gpu_memory_utilization_ratio", g, util / 2)
            yield _line("nvidia_gpu_memory_used_bytes", g, 40e9)
            yield _line("nvidia_gpu_memory_total_bytes", g, 80e9)
            yield _line("nvidia_gpu_temperature_celsius", g, 55 + gpu)
            yield _line("nvidia_gpu_power_watts", g, 400 + gpu)
            yield _line("nvidia_gpu_power_limit_watts", g, 700)
            yield _line("nvidia_gpu_energy_joules_total", g, 1e6 + 400 * t)
            yield _line("nvidia_gpu_sm_clock_hertz", g, 1.98e9)
            yield _line("nvidia_gpu_memory_clock_hertz", g, 2.6e9)
            for reason in THROTTLE:
                yield _line(
                    "nvidia_gpu_clocks_event_reasons", {**g, "reason": reason}, int(f.throttle.get(gpu) == reason)
                )
            for type_ in ("correctable", "uncorrectable"):
                for counter in ("volatile", "aggregate"):
                    bad = type_ == "uncorrectable" and gpu in f.ecc_dbe
                    yield _line(
                        "nvidia_gpu_ecc_errors_total", {**g, "type": type_, "counter": counter}, 2 if bad else 0
                    )
            for state in ("correctable", "uncorrectable", "pending", "failure"):
                bad = state == "failure" and gpu in f.row_remap_failure
                yield _line("nvidia_gpu_remapped_rows", {**g, "state": state}, int(bad))
            for cause in ("single_bit_ecc", "double_bit_ecc"):
                yield _line("nvidia_gpu_retired_pages", {**g, "cause": cause}, 0)
            if gpu in f.xid:
                xid = {**g, "xid": str(f.xid[gpu])}
                yield _line("nvidia_gpu_xid_errors_total", xid, 1)
                first_seen = self._xid_first_seen.setdefault((gpu, f.xid[gpu]), time.time())
                yield _line("nvidia_gpu_xid_first_seen_timestamp_seconds", xid, first_seen)
            yield _line("nvidia_gpu_last_xid", g, f.xid.get(gpu, 0))
            yield _line("nvidia_gpu_pcie_replay_errors_total", g, 0)
            for link in range(2):
                yield _line("nvidia_gpu_nvlink_errors_total", {**g, "link": str(link), "type": "replay"}, 0)
            if gpu in f.processes:
                pid, job = f.processes[gpu]
                labels = {"gpu": str(gpu), "pid": str(pid), "slurm_job_id": job}
                yield _line("nvidia_gpu_process_info", {**g, "pid": str(pid), "slurm_job_id": job}, 1)
                yield _line("nvidia_gpu_process_memory_used_bytes", labels, 2e9)
        yield _line("gpu_exporter_collect_duration_seconds", {}, 0.002)
        yield _line("gpu_exporter_collect_errors_total", {"collector": "nvml"}, 0)
        yield _line("gpu_exporter_last_collect_timestamp_seconds", {}, time.time())

    # -- Slurm exporter (issue #4) ----------------------------------------------------------

    def slurm_lines(self) -> Iterator[str]:
        t = time.time() - self.started
        yield _line("slurm_up", {}, 1)
        yield _line("slurm_nodes", {"state": "mixed"}, 1)
        yield _line("slurm_nodes", {"state": "down"}, len(FAKE_NODES))
        yield _line("slurm_node_state", {"node": GPU_NODE, "state": "mixed"}, 1)
        for node in FAKE_NODES:
            yield _line("slurm_node_state", {"node": node, "state": "down"}, 1)
            yield _line("slurm_node_reason_info", {"node": node, "state": "down", "reason": "Not responding"}, 1)
        for node in (GPU_NODE, *FAKE_NODES):
            yield _line("slurm_node_cpus", {"node": node}, 8)
            yield _line("slurm_node_cpus_allocated", {"node": node}, 2 if node == GPU_NODE else 0)
            yield _line("slurm_node_memory_total_bytes", {"node": node}, 64e9)
            yield _line("slurm_node_memory_allocated_bytes", {"node": node}, 8e9 if node == GPU_NODE else 0)
            yield _line("slurm_node_gpus", {"node": node, "gpu_type": "h100"}, GPUS)
            yield _line("slurm_node_gpus_allocated", {"node": node, "gpu_type": "h100"}, 2 if node == GPU_NODE else 0)
        yield _line("slurm_partition_gpus", {"partition": "gpu"}, GPUS * 3)
        yield _line("slurm_partition_gpus_allocated", {"partition": "gpu"}, 2)
        for state, count in (("running", 1), ("pending", 1)):
            yield _line("slurm_jobs", {"state": state, "partition": "gpu"}, count)
        yield _line("slurm_jobs_pending", {"partition": "gpu", "reason": "Resources"}, 1)
        yield _line("slurm_user_gpus_allocated", {"user": "alice", "account": "research"}, 2)
        yield _line("slurm_gpu_seconds_total", {"user": "alice", "account": "research", "partition": "gpu"}, 2 * t)
        for le, n in (("1", 0), ("10", 1), ("60", 1), ("+Inf", 1)):
            yield _line("slurm_job_wait_seconds_bucket", {"partition": "gpu", "le": le}, n + int(t // 5))
        yield _line("slurm_job_wait_seconds_sum", {"partition": "gpu"}, 5)
        yield _line("slurm_job_wait_seconds_count", {"partition": "gpu"}, 1 + int(t // 5))
        for gpu in (0, 1):
            yield _line(
                "slurm_job_gpu_info",
                {
                    "job_id": "101",
                    "user": "alice",
                    "account": "research",
                    "node": GPU_NODE,
                    "gpu": str(gpu),
                    "minor_number": str(gpu),
                },
                1,
            )
        for kind in ("main", "backfill"):
            for stat in ("last", "mean"):
                yield _line("slurm_scheduler_cycle_seconds", {"kind": kind, "stat": stat}, 0.001)
        yield _line("slurm_scheduler_queue_length", {}, 0)
        yield _line("slurm_rpc_calls_total", {"type": "REQUEST_JOB_INFO"}, 10 + t)
        for command in ("squeue", "sinfo", "sdiag"):
            yield _line("slurm_exporter_collect_duration_seconds", {"command": command}, 0.01)
            yield _line("slurm_exporter_parse_errors_total", {"command": command}, 0)
        yield _line("slurm_exporter_snapshot_age_seconds", {}, 1)
