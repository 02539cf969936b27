"""GPU node: every GPU of one node, its clocks-event reasons, memory, processes and their Slurm jobs."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models

from grafana.common import (
    BAD,
    OK,
    WARN,
    PanelSpec,
    Query,
    count_stat,
    findings_annotation,
    firing_alerts_annotation,
    flag_timeline,
    gpu_node_variable,
    query_variable,
    ratio_timeseries,
    stat,
    state_timeline,
    table,
    timeseries,
    value_text,
    watchdog_board,
)
from grafana.gpu_fleet import TEMPERATURE_STEPS
from grafana.promql import CLUSTER, GPUS, sel, with_job

UID = "gpu-watchdog-node"
NODE = f'{CLUSTER}, node=~"$node"'


def _gpu(metric: str, extra: str = "") -> str:
    return sel(metric, GPUS, extra)


def _per_gpu(metric: str, legend_suffix: str = "") -> Query:
    """One series per selected GPU, named by its index (and `legend_suffix`)."""
    return Query(_gpu(metric), legend="gpu {{gpu}}" + (f" {legend_suffix}" if legend_suffix else ""))


def _against_limit(title: str, description: str, metric: str, limit: tuple[str, str], unit: str) -> PanelSpec:
    """`metric` per GPU with the highest `limit` metric of the selected GPUs as a reference line."""
    limit_metric, limit_legend = limit
    return timeseries(
        title,
        description,
        [_per_gpu(metric), Query(f"max({_gpu(limit_metric)})", legend=limit_legend)],
        unit,
        min_value=0,
        width=8,
    )


def build() -> models.Dashboard:
    board = watchdog_board(
        UID,
        "GPU node",
        "Every GPU of one node: health, clocks-event reasons, memory, power, and the processes "
        "and Slurm jobs on each GPU. Purple marks are gpu-watchdog findings for this node.",
        extra_tags=["gpu"],
        variables=[
            gpu_node_variable(multi=False, include_all=False),
            query_variable(
                "gpu",
                "GPU",
                "GPU index on the node (nvidia-smi's index; Slurm's GRES index).",
                f"label_values(nvidia_gpu_up{{{NODE}}}, gpu)",
            ),
        ],
        # The agent tags each finding with the node name, so this shows only this node's findings.
        annotations=[findings_annotation(extra_tags=["$node"]), firing_alerts_annotation(NODE)],
    )

    board.row("$node").add(
        stat(
            "GPUs readable",
            "GPUs of the node NVML can read (recording rule node:nvidia_gpu_up:sum).",
            'node:nvidia_gpu_up:sum{node=~"$node"}',
            "none",
        ),
        stat(
            "Mean GPU utilization",
            "Mean utilization of the node's GPUs (node:nvidia_gpu_utilization_ratio:avg).",
            'node:nvidia_gpu_utilization_ratio:avg{node=~"$node"}',
            "percentunit",
        ),
        stat(
            "GPU memory in use",
            "Framebuffer memory used over installed, all GPUs of the node (node:nvidia_gpu_memory_used:ratio).",
            'node:nvidia_gpu_memory_used:ratio{node=~"$node"}',
            "percentunit",
            steps=((None, OK), (0.9, WARN), (0.97, BAD)),
        ),
        stat(
            "GPU power draw",
            "Power drawn by all GPUs of the node (node:nvidia_gpu_power_watts:sum).",
            'node:nvidia_gpu_power_watts:sum{node=~"$node"}',
            "watt",
        ),
        count_stat(
            "Idle allocated GPUs",
            "GPUs of this node a Slurm job holds whose 10-minute mean utilization is under 5 % "
            "(node_gpu:nvidia_gpu_idle_allocated:bool; GPUIdleWhileAllocated after 30 minutes).",
            'sum(node_gpu:nvidia_gpu_idle_allocated:bool{node=~"$node"})',
        ),
        stat(
            "Slurm state",
            "The node's state in Slurm (slurm_node_state): idle, mixed, allocated, drained, down...",
            Query('max by (state) (slurm_node_state{node=~"$node"})', legend="{{state}}", instant=True),
            "none",
            show_name=True,
        ),
    ).add(
        table(
            "GPUs",
            "One row per GPU: model, driver, state and the Slurm job holding it (empty when idle).",
            [
                f"max by (gpu, uuid, name, driver_version, mig_mode) ({_gpu('nvidia_gpu_info')})",
                f"max by (gpu) ({_gpu('nvidia_gpu_up')})",
                f"max by (gpu) ({_gpu('nvidia_gpu_utilization_ratio')})",
                f"max by (gpu) ({_gpu('nvidia_gpu_temperature_celsius')})",
                f"max by (gpu) ({_gpu('nvidia_gpu_last_xid')})",
                f"max by (gpu, job_id, user, account) ({with_job(_gpu('nvidia_gpu_up'))})",
            ],
            hidden_columns=("Time", "Value #A", "Value #F"),
            columns={
                "Value #B": ("readable", "none"),
                "Value #C": ("utilization", "percentunit"),
                "Value #D": ("temperature", "celsius"),
                "Value #E": ("last XID", "none"),
            },
            height=8,
        ),
    )

    board.row("Health and clocks").add(
        state_timeline(
            "GPU readable",
            "nvidia_gpu_up per GPU: red when the GPU cannot be read (lost, fell off the bus).",
            [Query(f"max by (gpu) ({_gpu('nvidia_gpu_up')})", legend="gpu {{gpu}}")],
            "none",
            value_text({"0": ("lost", BAD), "1": ("up", OK)}),
            steps=((None, BAD), (1.0, OK)),
            width=12,
        ),
        flag_timeline(
            "Clocks-event reasons",
            "Which clocks-event reasons are active per GPU. thermal / hw_slowdown / sw_thermal mean "
            "the GPU protects itself (GPUThermalThrottling); power_cap means power bound.",
            Query(
                f"max by (gpu, reason) ({_gpu('nvidia_gpu_clocks_event_reasons')}) == 1",
                legend="gpu {{gpu}} {{reason}}",
            ),
            "active",
            WARN,
            width=12,
        ),
    )

    board.row("Utilization, memory, thermals").add(
        ratio_timeseries(
            "GPU utilization",
            "Fraction of time a kernel ran, per GPU.",
            [_per_gpu("nvidia_gpu_utilization_ratio")],
            width=8,
        ),
        _against_limit(
            "Memory used",
            "Framebuffer memory used per GPU; the dashed line is the installed memory.",
            "nvidia_gpu_memory_used_bytes",
            ("nvidia_gpu_memory_total_bytes", "installed"),
            "bytes",
        ),
        ratio_timeseries(
            "Memory bandwidth utilization",
            "Fraction of time device memory was read or written, per GPU.",
            [_per_gpu("nvidia_gpu_memory_utilization_ratio")],
            width=8,
        ),
        timeseries(
            "Temperature",
            "GPU die temperature. Dashed lines: warning (85 C) and critical (90 C), as GPUTemperatureHigh.",
            [_per_gpu("nvidia_gpu_temperature_celsius")],
            "celsius",
            steps=TEMPERATURE_STEPS,
            width=8,
        ),
        _against_limit(
            "Power",
            "Power drawn per GPU and the enforced power limit.",
            "nvidia_gpu_power_watts",
            ("nvidia_gpu_power_limit_watts", "limit"),
            "watt",
        ),
        timeseries(
            "Clocks",
            "SM and memory clocks per GPU; SM clocks dropping under load with a throttle reason "
            "active is the signature of thermal or power slowdown.",
            [
                _per_gpu("nvidia_gpu_sm_clock_hertz", "SM"),
                _per_gpu("nvidia_gpu_memory_clock_hertz", "memory"),
            ],
            "hertz",
            width=8,
        ),
    )

    board.row("Activity and links (GPM, Hopper and later)").add(
        ratio_timeseries(
            "SM active",
            "Fraction of time the SMs had work, per GPU (NVML GPM; dcgm-exporter's "
            "DCGM_FI_PROF_SM_ACTIVE). Unlike GPU utilization, one small kernel does not read as 100 %. "
            "Empty for GPUs without GPM (before Hopper).",
            [_per_gpu("nvidia_gpu_sm_active_ratio")],
            width=8,
        ),
        ratio_timeseries(
            "Tensor and DRAM activity",
            "Tensor core pipe activity (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE) and DRAM bandwidth used "
            "(DCGM_FI_PROF_DRAM_ACTIVE) per GPU: low tensor activity on a training job means it "
            "is not using the tensor cores.",
            [
                _per_gpu("nvidia_gpu_tensor_active_ratio", "tensor"),
                _per_gpu("nvidia_gpu_dram_active_ratio", "DRAM"),
            ],
            width=8,
        ),
        timeseries(
            "PCIe and NVLink throughput",
            "Bytes per second over PCIe and over all NVLinks, per GPU and direction "
            "(DCGM_FI_PROF_PCIE_TX/RX_BYTES, DCGM_FI_PROF_NVLINK_TX/RX_BYTES).",
            [
                Query(
                    f"sum by (gpu, direction) ({_gpu('nvidia_gpu_pcie_throughput_bytes_per_second')})",
                    legend="gpu {{gpu}} PCIe {{direction}}",
                ),
                Query(
                    f"sum by (gpu, direction) ({_gpu('nvidia_gpu_nvlink_throughput_bytes_per_second')})",
                    legend="gpu {{gpu}} NVLink {{direction}}",
                ),
            ],
            "Bps",
            width=8,
        ),
        timeseries(
            "PCIe link width and generation",
            "PCIe lanes and generation the link runs at, per GPU, against the maximum GPU and slot "
            "support (dashed). A busy GPU below its maximum fires GPUPCIeLinkDegraded; an idle one "
            "dropping generation saves power.",
            [
                _per_gpu("nvidia_gpu_pcie_link_width", "width"),
                _per_gpu("nvidia_gpu_pcie_link_generation", "gen"),
                Query(f"max({_gpu('nvidia_gpu_pcie_link_max_width')})", legend="max width"),
            ],
            "none",
            width=12,
        ),
        timeseries(
            "HBM temperature",
            "Device memory (HBM) temperature per GPU; HBM throttles on its own limit, apart from the core temperature.",
            [_per_gpu("nvidia_gpu_memory_temperature_celsius")],
            "celsius",
            steps=TEMPERATURE_STEPS,
            width=12,
        ),
    )

    board.row("Processes and jobs").add(
        table(
            "Processes on the GPUs",
            "Compute processes per GPU with their GPU memory and the Slurm job id taken from the "
            "process's cgroup or environment; user and account come from the Slurm exporter.",
            [
                f"sum by (gpu, pid, slurm_job_id) ({_gpu('nvidia_gpu_process_memory_used_bytes')})",
            ],
            unit="bytes",
            width=12,
        ),
        table(
            "Slurm jobs on this node's GPUs",
            "Which job holds which GPU (slurm_job_gpu_info) and how busy that GPU is right now.",
            [
                f"max by (gpu, job_id, user, account) ({with_job(_gpu('nvidia_gpu_utilization_ratio'))})",
            ],
            unit="percentunit",
            steps=((None, BAD), (0.05, WARN), (0.5, OK)),
            width=12,
        ),
    )

    board.row("Errors").add(
        timeseries(
            "XID events",
            "XID events per GPU and code (increase per interval).",
            [
                Query(
                    f"sum by (gpu, xid) (increase({_gpu('nvidia_gpu_xid_errors_total')}[$__rate_interval]))",
                    legend="gpu {{gpu}} XID {{xid}}",
                )
            ],
            "none",
            width=8,
        ),
        timeseries(
            "ECC errors",
            "ECC error counters per GPU, type (correctable, uncorrectable) and counter (volatile "
            "since the driver loaded, aggregate over the GPU's life). H100 and later repair memory "
            "by row remapping (next panel) rather than page retirement.",
            [_per_gpu("nvidia_gpu_ecc_errors_total", "{{type}} {{counter}}")],
            "none",
            width=8,
        ),
        timeseries(
            "Remapped rows",
            "Row remapping per GPU and state: pending needs a GPU reset, failure needs an RMA.",
            [_per_gpu("nvidia_gpu_remapped_rows", "{{state}}")],
            "none",
            width=8,
        ),
    )
    return board.build()
