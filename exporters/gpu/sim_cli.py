"""`gpu-watchdog sim inject|clear|list`: edit the simulated GPUs' fault file (docs/sim-faults.md)."""

from __future__ import annotations

import click

from exporters.gpu.cli import default_faults_path
from exporters.gpu.sim.faults import (
    KINDS,
    THROTTLE_REASONS,
    Fault,
    FaultFileError,
    load_faults,
    make_fault,
    save_faults,
)

_FAULTS_HELP = "Fault file the sim exporter reads. [default: $GPU_WATCHDOG_SIM_FAULTS or .run/sim-faults.yml]"


def _load(path: str) -> list[Fault]:
    try:
        return load_faults(path)
    except FaultFileError as exc:
        raise click.ClickException(f"{exc} (fix or delete the file)") from None


@click.group()
def sim() -> None:
    """Inject faults into the simulated GPUs of `gpu-exporter --backend sim`."""


@sim.command()
@click.option("--faults", "path", type=click.Path(dir_okay=False), default=None, help=_FAULTS_HELP)
@click.option("--gpu", type=click.IntRange(min=0), required=True, help="GPU index.")
@click.argument("kind", type=click.Choice(list(KINDS)))
@click.argument("values", nargs=-1)
def inject(path: str | None, gpu: int, kind: str, values: tuple[str, ...]) -> None:
    """Add a fault: KIND [VALUE].

    \b
    xid CODE            deliver one XID event (e.g. 79, 48, 94)
    temperature C       pin the GPU temperature
    ecc_dbe [COUNT]     double-bit ECC errors (default 1); also a pending row remap
    row_remap_failure   a row could not be remapped
    lost                the GPU fell off the bus (NVML: GPU is lost)
    throttle REASON     hold clocks down:"""
    path = path or default_faults_path()
    try:
        fault = make_fault(gpu, kind, values)
    except FaultFileError as exc:
        raise click.BadParameter(str(exc), param_hint="KIND VALUE") from None
    faults = _load(path)
    save_faults(path, [*faults, fault])
    shown = " ".join(values)
    click.echo(f"injected {kind}{' ' + shown if shown else ''} on GPU {gpu} (id {fault.id}) into {path}")


inject.help = (
    (inject.help or "")
    + ", ".join(THROTTLE_REASONS)
    + (
        "\n    utilization PCT     pin utilization (0-100)"
        "\n    process PID [JOB]   a compute process; JOB: its Slurm job id (else read from /proc/PID)"
        "\n    hang SECONDS        every NVML call on the GPU blocks this long"
        "\n    stall SECONDS       the next NVML call blocks this long, then answers with old readings"
        "\n    handle_error ERR    handle lookup and every call raise ERR: gpu_is_lost, no_permission, unknown"
        "\n    unsupported NAME    that pynvml function or NVML_FI_ field answers NOT_SUPPORTED"
        "\n    pcie_link GENxWIDTH the PCIe link runs at e.g. 4x8 (maximum 5x16)"
        "\n    recovery_action N   the driver's recovery action field (0 none, 1 GPU reset, 2 node reboot, ...)"
        "\n    mig N               MIG mode with N (1-7) 1g.10gb instances"
    )
)


@sim.command()
@click.option("--faults", "path", type=click.Path(dir_okay=False), default=None, help=_FAULTS_HELP)
@click.option("--gpu", type=click.IntRange(min=0), default=None, help="Only this GPU's faults.")
@click.option("--kind", type=click.Choice(list(KINDS)), default=None, help="Only faults of this kind.")
def clear(path: str | None, gpu: int | None, kind: str | None) -> None:
    """Remove faults (all, or one GPU's, or one kind's)."""
    path = path or default_faults_path()
    faults = _load(path)
    keep = [f for f in faults if not ((gpu is None or f.gpu == gpu) and (kind is None or f.kind == kind))]
    save_faults(path, keep)
    click.echo(f"cleared {len(faults) - len(keep)} fault(s) from {path}; {len(keep)} left")


@sim.command("list")
@click.option("--faults", "path", type=click.Path(dir_okay=False), default=None, help=_FAULTS_HELP)
def list_faults(path: str | None) -> None:
    """Show the faults in the file."""
    path = path or default_faults_path()
    faults = _load(path)
    if not faults:
        click.echo(f"no faults in {path}")
    for f in faults:
        value = "" if f.value is None else f" {f.value}"
        job = f" job {f.job_id}" if f.job_id else ""
        click.echo(f"gpu {f.gpu}: {f.kind}{value}{job}  (id {f.id})")
