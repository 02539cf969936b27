"""Fixtures for the Slurm exporter tests: a real private Slurm cluster and exporter processes."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.harness.processes import ManagedProcess, ProcessManager, free_port
from tests.harness.slurm import SlurmCluster, SlurmUnavailable, start_cluster

EXPORTER = str(Path(sys.executable).parent / "slurm-exporter")


@pytest.fixture(scope="session")
def slurm_cluster(session_procs: ProcessManager) -> Iterator[SlurmCluster]:
    """A private Slurm 22.05 cluster (munged, slurmctld, slurmd) shared by the session.

    Node `socket.gethostname()` runs slurmd with 4 stand-in H100s; fake0001/fake0002 have no
    slurmd. Tests must not leave the controller stopped or the node drained.
    """
    try:
        cluster = start_cluster(session_procs, fake_nodes=2, extra_conf={"Licenses": "matlab:10,fluent:2"})
    except SlurmUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


ExporterFactory = Callable[..., tuple[ManagedProcess, str]]


@pytest.fixture
def slurm_exporter(procs: ProcessManager) -> ExporterFactory:
    """`slurm_exporter(args, env=...)` starts the real `slurm-exporter`; returns (process, base URL)."""

    def start(args: Sequence[str], env: dict[str, str] | None = None, wait: float = 60) -> tuple[ManagedProcess, str]:
        port = free_port()
        proc = procs.start(
            f"slurm-exporter-{port}",
            [EXPORTER, "--listen", f"127.0.0.1:{port}", *args],
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        proc.wait_http(f"{url}/metrics", timeout=wait)
        return proc, url

    return start


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: install the Debian package prometheus", pytrace=False)
    return found
