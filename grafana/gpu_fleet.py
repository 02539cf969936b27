"""GPU fleet: health of every GPU at a glance, filterable by cluster, node and model."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models

from grafana.common import (
    BAD,
    OK,
    WARN,
    Query,
    count_stat,
    findings_annotation,
    firing_alerts_annotation,
    gpu_node_variable,
    heatmap,
    query_variable,
    ratio_timeseries,
    stat,
    table,
    timeseries,
    watchdog_board,
)
from grafana.promql import CLUSTER, GPU_NODES, THROTTLE_REASONS, of_model, sel

UID = "gpu-watchdog-fleet"

# GPUTemperatureHigh: warning at 85 C, critical at 90 C (H100 SXM slows down near 89 C).
TEMPERATURE_STEPS = ((None, OK), (85.0, WARN), (90.0, BAD))
UNCORRECTED = 'type="uncorrectable"'
REMAP_BAD = 'state=~"failure|pending"'
THROTTLING = f'reason=~"{THROTTLE_REASONS}"'
# The scrape job of the GPU exporters, as in the rules (GPUExporterDown) and every generated config.
GPU_TARGETS = 'job="gpu", cluster=~"$cluster", node=~"$node"'


def _gpu(metric: str, extra: str = "") -> str:
    """A GPU metric over the selected cluster/node, restricted to the selected models."""
    return of_model(sel(metric, GPU_NODES, extra))


def _gpu_over(function: str, metric: str, window: str, extra: str = "") -> str:
    """`function(metric[window])` over the selected GPUs (the model filter goes outside the range)."""
    return of_model(f"{function}({sel(metric, GPU_NODES, extra)}[{window}])")


def build() -> models.Dashboard:
    board = watchdog_board(
        UID,
        "GPU fleet",
        "Every GPU at a glance: lost GPUs, XIDs, ECC and row remapping, throttling, "
        "temperature, power and utilization. Purple marks are gpu-watchdog findings.",
        extra_tags=["gpu"],
        variables=[
            gpu_node_variable(),
            query_variable(
                "model",
                "GPU model",
                "GPU product name from nvidia_gpu_info.",
                f'label_values(nvidia_gpu_info{{{CLUSTER}, node=~"$node"}}, name)',
            ),
        ],
        annotations=[findings_annotation(), firing_alerts_annotation('component="gpu"')],
    )

    board.row("Health").add(
        count_stat(
            "GPUs reporting",
            "GPUs whose exporter can read them (nvidia_gpu_up == 1).",
            f"count({_gpu('nvidia_gpu_up')} == 1)",
            alarm=None,
        ),
        count_stat(
            "GPUs lost",
            "GPUs the exporter knows but cannot read (fell off the bus, XID 79): nvidia_gpu_up == 0. "
            "Anything above zero needs a node drain and a GPU reset or RMA (alert GPUFellOffBus).",
            f"count({_gpu('nvidia_gpu_up')} == 0)",
            alarm=BAD,
        ),
        count_stat(
            "GPUs with XIDs",
            "GPUs that reported an XID during the time range (nvidia_gpu_last_xid above 0; it keeps "
            "the latest code until the exporter restarts). The XID table below has codes and counts.",
            f"count({_gpu_over('max_over_time', 'nvidia_gpu_last_xid', '$__range')} > 0)",
        ),
        count_stat(
            "Uncorrectable ECC errors",
            "Double-bit (uncorrectable) ECC errors over the time range: the application on that GPU "
            "saw corrupted memory. Alert GPUDoubleBitECC.",
            "sum(max without (counter) "
            f"({_gpu_over('increase', 'nvidia_gpu_ecc_errors_total', '$__range', UNCORRECTED)}))",
            alarm=BAD,
        ),
        count_stat(
            "Row remap failures / pending",
            "GPUs with a failed row remap (RMA) or a remap pending until the next GPU reset. "
            "Alerts GPURowRemapFailure and GPURowRemapPending.",
            f"count({_gpu('nvidia_gpu_remapped_rows', REMAP_BAD)} > 0)",
            alarm=BAD,
        ),
        count_stat(
            "GPUs throttling",
            f"GPUs with a protective clocks-event reason active ({THROTTLE_REASONS.replace('|', ', ')}). "
            "Alert GPUThermalThrottling.",
            f"count(max by (node, gpu) ({_gpu('nvidia_gpu_clocks_event_reasons', THROTTLING)}) == 1)",
        ),
    ).add(
        stat(
            "Hottest GPU",
            "Highest GPU die temperature now. Warning at 85 C, critical at 90 C (GPUTemperatureHigh).",
            f"max({_gpu('nvidia_gpu_temperature_celsius')})",
            "celsius",
            steps=TEMPERATURE_STEPS,
        ),
        stat(
            "Fleet power draw",
            "Sum of the power drawn by the selected GPUs.",
            f"sum({_gpu('nvidia_gpu_power_watts')})",
            "watt",
        ),
        stat(
            "Mean GPU utilization",
            "Mean fraction of time a kernel ran, over the selected GPUs.",
            f"avg({_gpu('nvidia_gpu_utilization_ratio')})",
            "percentunit",
            steps=((None, WARN), (0.3, OK)),
        ),
        stat(
            "GPU memory in use",
            "Framebuffer memory used over memory installed, selected GPUs.",
            f"sum({_gpu('nvidia_gpu_memory_used_bytes')}) / sum({_gpu('nvidia_gpu_memory_total_bytes')})",
            "percentunit",
            steps=((None, OK), (0.9, WARN), (0.97, BAD)),
        ),
        stat(
            "Oldest exporter snapshot",
            "Age of the oldest last GPU collection: a stuck NVML loop shows here before its series "
            "go stale. GPUExporterDown fires above 120 s.",
            f"max(time() - gpu_exporter_last_collect_timestamp_seconds{{{GPU_NODES}}})",
            "s",
            steps=((None, OK), (30.0, WARN), (120.0, BAD)),
        ),
        count_stat(
            "GPU exporters down",
            "GPU exporter targets (scrape job `gpu`) Prometheus cannot scrape (alert GPUExporterDown).",
            f"count(up{{{GPU_TARGETS}}} == 0)",
            alarm=BAD,
        ),
    )

    board.row("Utilization").add(
        heatmap(
            "GPU utilization distribution",
            "How many GPUs sit at each utilization level over time: a band at 0 % on a busy "
            "cluster means allocated-but-idle GPUs (see Jobs and efficiency).",
            Query(_gpu("nvidia_gpu_utilization_ratio"), legend="{{node}} gpu {{gpu}}"),
            "percentunit",
        ),
        ratio_timeseries(
            "Utilization per node",
            "Mean GPU utilization of each node's selected GPUs.",
            [Query(f"avg by (node) ({_gpu('nvidia_gpu_utilization_ratio')})", legend="{{node}}")],
        ),
    )

    board.row("Thermals and power").add(
        timeseries(
            "Temperature",
            "GPU die temperature per GPU. Dashed lines: warning (85 C) and critical (90 C), as GPUTemperatureHigh.",
            [Query(_gpu("nvidia_gpu_temperature_celsius"), legend="{{node}} gpu {{gpu}}")],
            "celsius",
            steps=TEMPERATURE_STEPS,
        ),
        timeseries(
            "Power draw over limit",
            "Power drawn as a fraction of each GPU's enforced power limit; sustained 100 % with "
            "power_cap active means the job is power bound.",
            [
                Query(
                    f"{_gpu('nvidia_gpu_power_watts')} / {_gpu('nvidia_gpu_power_limit_watts')}",
                    legend="{{node}} gpu {{gpu}}",
                )
            ],
            "percentunit",
            steps=((None, OK), (0.95, WARN)),
            min_value=0,
        ),
        timeseries(
            "GPUs per clocks-event reason",
            "How many selected GPUs have each clocks-event reason active. thermal, hw_slowdown and "
            "sw_thermal mean the GPU protects itself; power_cap is the power limit; idle is benign.",
            [
                Query(
                    f"sum by (reason) ({_gpu('nvidia_gpu_clocks_event_reasons')})",
                    legend="{{reason}}",
                )
            ],
            "none",
            stacked=True,
        ),
        timeseries(
            "Energy used",
            "Energy the selected GPUs draw, per node (rate of the energy counter, i.e. mean power).",
            [
                Query(
                    f"sum by (node) ({_gpu_over('rate', 'nvidia_gpu_energy_joules_total', '$__rate_interval')})",
                    legend="{{node}}",
                )
            ],
            "watt",
        ),
    )

    board.row("Errors").add(
        table(
            "XIDs by GPU",
            "XID events per GPU and code since the exporter started, and the latest code. 79: fell "
            "off the bus; 48/63/64/94/95: memory errors; 13/31/43: usually application faults "
            "(docs/runbooks/GPUXidError.md). Counted totals, not increases: a counter born at its "
            "first event would show an increase of zero.",
            [
                f"max by (node, gpu, xid) ({_gpu('nvidia_gpu_xid_errors_total')})",
                f"max by (node, gpu) ({_gpu('nvidia_gpu_last_xid')}) > 0",
            ],
            hidden_columns=("Time",),
            columns={"Value #A": ("events", "none"), "Value #B": ("last XID", "none")},
            steps=((None, WARN),),
            width=12,
        ),
        timeseries(
            "XID events",
            "XID events per code (increase per interval).",
            [
                Query(
                    f"sum by (xid) ({_gpu_over('increase', 'nvidia_gpu_xid_errors_total', '$__rate_interval')})",
                    legend="XID {{xid}}",
                )
            ],
            "none",
            width=12,
        ),
        timeseries(
            "ECC errors",
            "ECC error increase per GPU and type. Corrected errors are tolerated; uncorrected "
            "(double-bit) ones crash the application and lead to row remapping.",
            [
                Query(
                    "sum by (node, gpu, type) "
                    f"({_gpu_over('increase', 'nvidia_gpu_ecc_errors_total', '$__rate_interval')})",
                    legend="{{node}} gpu {{gpu}} {{type}}",
                )
            ],
            "none",
            width=8,
        ),
        timeseries(
            "Remapped rows",
            "Rows remapped per GPU and state (HBM repair). pending needs a GPU reset; failure "
            "means the GPU ran out of spare rows: RMA.",
            [Query(_gpu("nvidia_gpu_remapped_rows"), legend="{{node}} gpu {{gpu}} {{state}}")],
            "none",
            width=8,
        ),
        timeseries(
            "PCIe replays and NVLink errors",
            "Link-level errors per second. A rising PCIe replay rate points at a bad riser or slot; "
            "NVLink errors at a bad bridge or GPU.",
            [
                Query(
                    "sum by (node, gpu) "
                    f"({_gpu_over('rate', 'nvidia_gpu_pcie_replay_errors_total', '$__rate_interval')})",
                    legend="{{node}} gpu {{gpu}} PCIe",
                ),
                Query(
                    "sum by (node, gpu, type) "
                    f"({_gpu_over('rate', 'nvidia_gpu_nvlink_errors_total', '$__rate_interval')})",
                    legend="{{node}} gpu {{gpu}} NVLink {{type}}",
                ),
            ],
            "none",
            width=8,
        ),
    )
    return board.build()
