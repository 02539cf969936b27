"""`gpu-exporter`: NVIDIA GPU health and attribution metrics from a background NVML poll."""

from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from exporters.gpu.attribution import JobResolver
from exporters.gpu.backend import BackendUnavailable, FieldKey, NvmlBackend
from exporters.gpu.collectors import COLLECTOR_CLASSES, GpuCollector, GpuContext
from exporters.gpu.collectors.device import DeviceCollector
from exporters.gpu.sampler import GpuSampler
from exporters.gpu.xid import XidWatcher
from gpu_watchdog_core.childproc import is_child
from gpu_watchdog_core.cli import (
    ExporterParts,
    check_listen_or_exit,
    collection_process_option,
    collectors_option,
    common_options,
    fail,
    interval_option,
    load_web_config_or_exit,
    select_or_exit,
    serve_exporter,
)
from gpu_watchdog_core.logs import setup_logging

log = logging.getLogger("exporters.gpu")

DEFAULT_SIM_FAULTS = ".run/sim-faults.yml"
SWITCH_INTERVAL_S = 0.0005
GC_THRESHOLDS = (10_000, 20, 100)
# Above this many GPUs the exporter collects in a separate process by default; at or below it,
# in a thread. bench/gpu_scrape.py: in a thread, a cycle at 8 GPUs is short enough that scrape
# p99 stays near a plain server's (1.5-2.4x), and one interpreter is ~30 MiB less than two; at
# 20 GPUs a thread's cycle already took p99 to 6.7x, at 64 GPUs 4-12x (docs/gpu-exporter.md).
COLLECTION_PROCESS_ABOVE_GPUS = 8
NVIDIA_PROC_GPUS = "/proc/driver/nvidia/gpus"


def gpus_on_node(backend_name: str, sim_gpus: int, proc_gpus: str = NVIDIA_PROC_GPUS) -> int | None:
    """How many GPUs the exporter will read, known without opening NVML (the serving process
    never loads it): the driver lists one directory per GPU (by PCI address) under /proc.
    None when the driver's directory cannot be read."""
    if backend_name == "sim":
        return sim_gpus
    try:
        return sum(1 for _ in os.scandir(proc_gpus))
    except OSError:
        return None


def wants_collection_process(chosen: bool | None, gpus: int | None) -> bool:
    """The flag when given; else a separate process only where the GPU count needs one (or is unknown)."""
    if chosen is not None:
        return chosen
    return gpus is None or gpus > COLLECTION_PROCESS_ABOVE_GPUS


def default_faults_path() -> str:
    """Where `gpu-watchdog sim` and `gpu-exporter --backend sim` meet when no path is given."""
    return os.environ.get("GPU_WATCHDOG_SIM_FAULTS") or DEFAULT_SIM_FAULTS


@dataclass
class _Name:
    name: str

    def collect(self) -> list[Any]:
        return []


def choose_collectors(wanted: tuple[str, ...]) -> list[type[GpuCollector]]:
    """Collectors by name, in dependency order whatever order they were named in: `device` always
    runs, and first, because it takes the cycle's sample the others turn into series."""
    by_name = {cls.name: cls for cls in COLLECTOR_CLASSES}
    named = {c.name for c in select_or_exit([_Name(n) for n in by_name], wanted)}
    return [cls for cls in COLLECTOR_CLASSES if cls is DeviceCollector or cls.name in named]


def build(
    backend: NvmlBackend,
    classes: list[type[GpuCollector]],
    *,
    timeout: float,
    proc_roots: list[str | Path],
    xid: bool = True,
    nvlink_per_link: bool = False,
    parallelism: int = 4,
) -> tuple[GpuContext, list[GpuCollector]]:
    """Wire a sampler for exactly what the chosen collectors read, the XID watcher and collectors."""
    reads: set[str] = set()
    fields: set[FieldKey] = set()
    slow: set[FieldKey] = set()
    for cls in classes:
        reads |= cls.reads
        fields |= set(cls.fields)
        slow |= set(cls.slow_fields)
    sampler = GpuSampler(backend, reads, fields, timeout=timeout, parallelism=parallelism, slow_fields=slow)
    watcher = None
    if xid and any(cls.name == "xid" for cls in classes):
        watcher = XidWatcher(backend)
        watcher.register()  # before the first cycle: NVML drops events from before registration
        sampler.on_recovered = watcher.gpu_recovered
    ctx = GpuContext(sampler=sampler, xid=watcher, jobs=JobResolver(proc_roots), nvlink_per_link=nvlink_per_link)
    return ctx, [cls(ctx) for cls in classes]


def open_backend(backend_name: str, sim_gpus: int, sim_faults: str | None) -> tuple[NvmlBackend, list[str | Path]]:
    proc_roots: list[str | Path] = ["/proc"]
    if backend_name == "sim":
        from exporters.gpu.sim import SimNvml

        sim = SimNvml(gpus=sim_gpus, faults_path=sim_faults or default_faults_path())
        # Simulated processes given a job id get a cgroup file there; real pids resolve in /proc.
        proc_roots.insert(0, sim.proc_root)
        nvml: Any = sim
    else:
        import pynvml

        nvml = pynvml
    backend = NvmlBackend(nvml)
    try:
        backend.open()
    except BackendUnavailable as exc:
        hint = " (no NVIDIA driver on this machine?)" if backend_name == "nvml" else ""
        fail(f"{exc}{hint}; run with --backend sim for simulated GPUs")
    return backend, proc_roots


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common_options(default_listen="0.0.0.0:9400", envvar_prefix="GPU_EXPORTER")
@interval_option("GPU_EXPORTER", 5.0, "Seconds between collections.", minimum=0.1)
@click.option(
    "--backend",
    type=click.Choice(["nvml", "sim"]),
    default="nvml",
    envvar="GPU_EXPORTER_BACKEND",
    help="Where GPU data comes from: the NVIDIA driver, or simulated H100s.",
)
@click.option(
    "--sim-gpus",
    type=click.IntRange(min=1, max=1024),
    default=8,
    envvar="GPU_EXPORTER_SIM_GPUS",
    help="GPUs the sim backend pretends to have.",
)
@click.option(
    "--sim-faults",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="GPU_EXPORTER_SIM_FAULTS",
    help=f"Fault file re-read every cycle (sim backend). [default: $GPU_WATCHDOG_SIM_FAULTS or {DEFAULT_SIM_FAULTS}]",
)
@collectors_option("GPU_EXPORTER", [c.name for c in COLLECTOR_CLASSES], " device always runs.")
@click.option(
    "--nvml-timeout",
    type=click.FloatRange(min=0.01),
    default=None,
    envvar="GPU_EXPORTER_NVML_TIMEOUT",
    help="Seconds a GPU's NVML reads may take per cycle before it is reported down. [default: interval/2]",
)
@click.option(
    "--nvml-parallelism",
    type=click.IntRange(min=1, max=64),
    default=4,
    envvar="GPU_EXPORTER_NVML_PARALLELISM",
    help="GPUs read at once. More shortens the cycle on many GPUs; every reader competes with "
    "scrapes for Python's GIL.",
)
@click.option(
    "--nvlink-per-link/--no-nvlink-per-link",
    default=False,
    envvar="GPU_EXPORTER_NVLINK_PER_LINK",
    help="NVLink error counters per link (18 links x 3 types per H100) instead of summed per GPU.",
)
@collection_process_option(
    "GPU_EXPORTER",
    default=None,
    default_text=f"on above {COLLECTION_PROCESS_ABOVE_GPUS} GPUs or when the GPU count is unknown, else off",
)
def main(  # noqa: PLR0917 - click passes every flag
    listen: str,
    web_config_path: str | None,
    log_level: str,
    log_format: str,
    interval: float,
    backend: str,
    sim_gpus: int,
    sim_faults: str | None,
    collectors: tuple[str, ...],
    nvml_timeout: float | None,
    nvml_parallelism: int,
    nvlink_per_link: bool,
    collection_process: bool | None,
) -> None:
    """Export NVIDIA GPU metrics for Prometheus from a background NVML poll."""
    # The collection thread renders thousands of series per cycle in pure Python; with the
    # default 5 ms GIL switch interval a scrape arriving meanwhile waits up to 5 ms at every
    # point where it must take the GIL back (accept, read, write), so scrape p99 grew with the
    # GPU count. 0.5 ms hands the GIL to the event loop promptly (bench/gpu_scrape.py).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    setup_logging(log_level, log_format)
    # Cheap checks first: a typo should not wait for NVML to initialise.
    check_listen_or_exit(listen)
    if not is_child():  # the collection process serves nothing (and need not load ssl for it)
        load_web_config_or_exit(web_config_path)
    classes = choose_collectors(collectors)

    def build_parts() -> ExporterParts:
        # Where collection runs: the collection process by default (gpu_watchdog_core/childproc.py).
        gpu_backend, proc_roots = open_backend(backend, sim_gpus, sim_faults)
        timeout = nvml_timeout if nvml_timeout is not None else interval / 2
        ctx, chosen = build(
            gpu_backend,
            classes,
            timeout=timeout,
            proc_roots=proc_roots,
            nvlink_per_link=nvlink_per_link,
            parallelism=nvml_parallelism,
        )
        log.info(
            "GPUs found",
            extra={
                "backend": backend,
                "gpus": gpu_backend.count,
                "driver": gpu_backend.driver_version,
                "collectors": ",".join(c.name for c in chosen),
                "collection": "separate process" if is_child() else "thread",
            },
        )
        if ctx.xid is not None:
            ctx.xid.start()
        # Each cycle allocates tens of thousands of short-lived objects (families, samples, label
        # lists). With the default thresholds that is ~20 collections a cycle, and a full one of
        # 40-100 ms now and then at 64 GPUs: the GIL is held throughout, so scrapes stall (the p99).
        # Nearly all of it is freed by reference counting, not by the collector. So: freeze what
        # start-up built (never collected again) and collect young objects far less often.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

        def health() -> tuple[bool, str]:
            down = [str(s.index) for s in ctx.sampler.samples if not s.up]
            total = gpu_backend.count
            if not down:
                return True, f"ok; {total}/{total} GPUs up"
            return True, f"ok; {total - len(down)}/{total} GPUs up (down: {', '.join(down)})"

        def shutdown() -> None:
            if ctx.xid is not None:
                ctx.xid.stop()
            ctx.sampler.close()
            gpu_backend.close()

        return ExporterParts(list(chosen), health, shutdown)

    # Decided in the serving process only; the collection process it starts just collects.
    separate = not is_child() and wants_collection_process(collection_process, gpus_on_node(backend, sim_gpus))
    serve_exporter(
        prefix="gpu_exporter",
        title="gpu-exporter",
        build=build_parts,
        interval=interval,
        listen=listen,
        web_config_path=web_config_path,
        log_level=log_level,
        log_format=log_format,
        collection_process=separate,
    )
