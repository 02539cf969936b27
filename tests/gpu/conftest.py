"""GPU exporter fixtures: the simulated NVML library, a backend over it, and the real exporter."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters.gpu.backend import NvmlBackend
from exporters.gpu.sim import Fault, SimNvml, save_faults
from tests.harness.processes import LOOPBACK, ManagedProcess, ProcessManager, free_port, http_get

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    candidate = BIN / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    assert found, f"{name} is not installed in the venv (pip install -e .)"
    return found


@pytest.fixture
def faults_path(tmp_path: Path) -> Path:
    return tmp_path / "faults.yml"


@pytest.fixture
def sim(faults_path: Path) -> Iterator[SimNvml]:
    lib = SimNvml(gpus=4, faults_path=faults_path)
    yield lib
    if lib.proc_root.exists():
        shutil.rmtree(lib.proc_root, ignore_errors=True)


@pytest.fixture
def backend(sim: SimNvml) -> Iterator[NvmlBackend]:
    be = NvmlBackend(sim)
    be.open()
    yield be
    be.close()


@pytest.fixture
def sleeper(procs: ProcessManager) -> ManagedProcess:
    """A real process that belongs to Slurm job 4242 by its environment."""
    return procs.start("sleeper", ["sleep", "300"], extra_env={"SLURM_JOB_ID": "4242"})


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """The first sample called `name` whose labels include `labels`, or None."""
    want = set(labels.items())
    for (sample_name, sample_labels), v in samples(text).items():
        if sample_name == name and want <= sample_labels:
            return v
    return None


def sim_cli(faults: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script("gpu-watchdog"), "sim", *args[:1], "--faults", str(faults), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass
class Exporter:
    url: str
    faults: Path
    proc: ManagedProcess
    interval: float

    def metrics(self, **kwargs: object) -> str:
        status, body = http_get(f"{self.url}/metrics", **kwargs)  # type: ignore[arg-type]
        assert status == 200, body[:300]
        return body.decode()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> tuple[str, float]:
        """(metrics text, seconds waited) once predicate(text) holds."""
        started = time.monotonic()
        while True:
            text = self.metrics()
            if predicate(text):
                return text, time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.05)


@pytest.fixture
def start_exporter(procs: ProcessManager, tmp_path: Path) -> Callable[..., Exporter]:
    def start(
        *extra: str,
        gpus: int = 4,
        interval: float = 1.0,
        web: str | None = None,
        faults_at_start: list[Fault] | None = None,
    ) -> Exporter:
        port = free_port()
        faults = tmp_path / f"faults-{port}.yml"
        if faults_at_start:  # already broken when the exporter starts (a GPU off the bus at boot)
            save_faults(faults, faults_at_start)
        argv = [
            script("gpu-exporter"),
            "--backend=sim",
            f"--sim-gpus={gpus}",
            f"--sim-faults={faults}",
            f"--interval={interval}",
            f"--listen={LOOPBACK}:{port}",
            *extra,
        ]
        if web:
            argv.append(f"--web-config={web}")
        proc = procs.start(f"gpu-exporter-{port}", argv)
        url = f"{'https' if web else 'http'}://{LOOPBACK}:{port}"
        if not web:  # TLS/auth callers wait with their own client context
            proc.wait_http(f"{url}/healthz")
        return Exporter(url=url, faults=faults, proc=proc, interval=interval)

    return start
