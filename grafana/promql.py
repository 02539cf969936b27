"""PromQL building blocks the dashboards share: selectors over the template variables, joins.

GPU series carry `node` (a Prometheus target label: the Slurm NodeName, see
docs/architecture.md) and `gpu` (the NVML index). `slurm_job_gpu_info{job_id,user,account,node,
gpu,minor_number}` carries `node` too, but its `gpu` is Slurm's GRES IDX, which is the device
minor number (N of /dev/nvidiaN), not the NVML index: the two differ where the driver probed the
GPUs in another order than PCI. So "which job holds this GPU" goes through `nvidia_gpu_info`,
which carries both: job assignments are matched `on (node, minor_number)` and take the exporter's
`gpu` (see `gpu_jobs`), then join GPU series `on (node, gpu)`.
"""

from __future__ import annotations

CLUSTER = 'cluster=~"$cluster"'
GPU_NODES = f'{CLUSTER}, node=~"$node"'
GPUS = f'{GPU_NODES}, gpu=~"$gpu"'
SLURM = CLUSTER
SLURM_NODES = f'{CLUSTER}, node=~"$node"'
JOBS = f'{CLUSTER}, user=~"$user", account=~"$account"'

# Clocks-event reasons that mean the GPU slows itself down to protect itself (as opposed to
# idle or application clocks): what GPUThermalThrottling alerts on.
THROTTLE_REASONS = "thermal|hw_thermal|sw_thermal|hw_slowdown|hw_power_brake"

# Utilization under this counts as idle for "allocated but idle" (GPUIdleWhileAllocated).
IDLE_UTILIZATION = 0.05


def sel(metric: str, selector: str, extra: str = "") -> str:
    """`metric{selector, extra}`."""
    inner = f"{selector}, {extra}" if extra else selector
    return f"{metric}{{{inner}}}"


def of_model(expr: str, selector: str = GPU_NODES) -> str:
    """Keep only GPUs whose `nvidia_gpu_info` model name matches `$model`."""
    info = sel("nvidia_gpu_info", selector, 'name=~"$model"')
    return f"(({expr}) and on (node, gpu) {info})"


# slurm_job_gpu_info's own labels: ignoring them matches each series with its exporter's slurm_up.
JOB_GPU_LABELS = "job_id, user, account, node, gpu, minor_number, gpu_type"


def job_gpus(job_selector: str = CLUSTER) -> str:
    """`slurm_job_gpu_info`, only from Slurm exporters whose last poll succeeded (`slurm_up` 1).

    On a failed poll the exporter keeps serving its last good assignments, which may name jobs
    that have ended since: a panel must not attribute GPUs to them.
    """
    return (
        f"({sel('slurm_job_gpu_info', job_selector)} and ignoring ({JOB_GPU_LABELS}) ({sel('slurm_up', CLUSTER)} == 1))"
    )


# nvidia_gpu_info reduced to what maps a minor number to a GPU. A GPU whose minor number could
# not be read (empty) is left out rather than guessed; two of them on one node would otherwise
# make the match many-to-many and fail the whole query.
GPU_MINORS = "max by (node, minor_number, gpu) (" + sel("nvidia_gpu_info", CLUSTER, 'minor_number!=""') + ")"


def gpu_jobs(job_selector: str = CLUSTER) -> str:
    """`job_gpus` with the GPU exporter's `gpu` (NVML index) in place of Slurm's IDX.

    Matched on (node, minor_number): Slurm's IDX is the number of /dev/nvidiaN, which is what
    the GPU exporter exports as `minor_number` (docs/slurm-exporter.md, the job-to-GPU map).
    """
    return f"({job_gpus(job_selector)} * on (node, minor_number) group_left (gpu) {GPU_MINORS})"


def with_job(expr: str, job_selector: str = CLUSTER) -> str:
    """Attach job_id/user/account of the Slurm job holding each GPU (drops GPUs no job holds)."""
    return f"({expr}) * on (node, gpu) group_left (job_id, user, account) {gpu_jobs(job_selector)}"
