"""The collection process (gpu_watchdog_core/childproc.py) of the real `gpu-exporter`: killed,
hung and SIGTERM cases, gzip of both formats as one gzip member, and which mode the GPU count
picks when no flag is given."""

from __future__ import annotations

import gzip
import http.client
import os
import signal
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from exporters.gpu.cli import COLLECTION_PROCESS_ABOVE_GPUS, gpus_on_node, wants_collection_process
from tests.gpu.conftest import Exporter, script, sim_cli, value
from tests.harness.processes import LOOPBACK, ProcessManager, free_port, http_get

pytestmark = pytest.mark.slow

StartExporter = Callable[..., Exporter]


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(c) for c in text)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def start(
    procs: ProcessManager,
    tmp_path: Path,
    *,
    hang_after: float | None = None,
    gpus: int = 4,
    mode: str | None = "--collection-process",
) -> Exporter:
    """A sim exporter with `gpus` GPUs, collecting in a separate process by default (4 GPUs alone
    would pick a thread); `mode=None` leaves the choice to the exporter."""
    port = free_port()
    faults = tmp_path / "faults.yml"
    argv = [
        script("gpu-exporter"),
        "--backend=sim",
        f"--sim-gpus={gpus}",
        f"--sim-faults={faults}",
        "--interval=0.5",
        f"--listen={LOOPBACK}:{port}",
        *([mode] if mode else []),
    ]
    env = {"GPU_WATCHDOG_COLLECTION_HANG_AFTER": str(hang_after)} if hang_after else {}
    proc = procs.start(f"gpu-exporter-{port}", argv, extra_env=env)
    url = f"http://{LOOPBACK}:{port}"
    proc.wait_http(f"{url}/healthz")
    return Exporter(url=url, faults=faults, proc=proc, interval=0.5)


def test_killed_collection_process_is_restarted_and_reported(procs: ProcessManager, tmp_path: Path) -> None:
    exp = start(procs, tmp_path)
    text = exp.metrics()
    assert value(text, "gpu_exporter_collection_process_up") == 1
    assert value(text, "gpu_exporter_collection_process_restarts_total") == 0
    assert value(text, "gpu_exporter_collector_success", collector="device") == 1
    [child] = children(exp.proc.pid)
    os.kill(child, signal.SIGKILL)
    text, _ = exp.wait_for(
        lambda t: value(t, "gpu_exporter_collection_process_restarts_total") == 1, 10, "the restart to be counted"
    )
    assert value(text, "nvidia_gpu_up", gpu="0") == 1  # never dark: the last snapshot is served meanwhile
    [second] = children(exp.proc.pid)
    assert second != child
    # The new process collects again: fresh snapshots, and the fault file still reaches it.
    assert sim_cli(exp.faults, "inject", "--gpu", "1", "lost").returncode == 0
    text, _ = exp.wait_for(lambda t: value(t, "nvidia_gpu_up", gpu="1") == 0, 10, "the injected fault")
    age = value(text, "gpu_exporter_snapshot_age_seconds")
    assert age is not None and age < 2
    assert value(text, "gpu_exporter_collection_process_up") == 1


def test_hung_collection_process_is_killed_and_restarted(procs: ProcessManager, tmp_path: Path) -> None:
    exp = start(procs, tmp_path, hang_after=3)
    [child] = children(exp.proc.pid)
    os.kill(child, signal.SIGSTOP)  # hung: alive, sends nothing
    try:
        time.sleep(2)
        text = exp.metrics()
        age = value(text, "gpu_exporter_snapshot_age_seconds")
        assert age is not None and age > 1.5  # the last good snapshot, with its age
        assert value(text, "nvidia_gpu_up", gpu="0") == 1
        # Past hang_after: SIGTERM (ignored while stopped), SIGKILL after the grace period, a new one.
        text, _ = exp.wait_for(
            lambda t: value(t, "gpu_exporter_collection_process_restarts_total") == 1, 15, "the hung process's restart"
        )
        wait_until(lambda: not alive(child), 10, "the hung process to be gone")
        exp.wait_for(
            lambda t: (value(t, "gpu_exporter_snapshot_age_seconds") or 99) < 2, 15, "fresh snapshots after the restart"
        )
        assert http_get(f"{exp.url}/healthz")[0] == 200
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_sigterm_leaves_no_collection_process(procs: ProcessManager, tmp_path: Path) -> None:
    exp = start(procs, tmp_path)
    [child] = children(exp.proc.pid)
    os.kill(exp.proc.pid, signal.SIGTERM)  # the serving process only, not its group
    assert exp.proc.popen.wait(15) == 0
    wait_until(lambda: not alive(child), 5, "the collection process to exit")


def test_serving_process_killed_takes_the_collection_process_with_it(procs: ProcessManager, tmp_path: Path) -> None:
    exp = start(procs, tmp_path)
    [child] = children(exp.proc.pid)
    os.kill(exp.proc.pid, signal.SIGKILL)
    exp.proc.popen.wait(5)
    wait_until(lambda: not alive(child), 10, "the orphaned collection process to exit")


def test_in_process_collection_still_available(procs: ProcessManager, tmp_path: Path) -> None:
    exp = start(procs, tmp_path, mode="--no-collection-process")
    assert children(exp.proc.pid) == []
    text = exp.metrics()
    assert value(text, "nvidia_gpu_up", gpu="0") == 1
    assert value(text, "gpu_exporter_collection_process_up") is None


@pytest.mark.parametrize(
    ("gpus", "separate"), [(COLLECTION_PROCESS_ABOVE_GPUS, False), (COLLECTION_PROCESS_ABOVE_GPUS + 1, True)]
)
def test_gpu_count_picks_the_mode_when_no_flag_is_given(
    procs: ProcessManager, tmp_path: Path, gpus: int, separate: bool
) -> None:
    exp = start(procs, tmp_path, gpus=gpus, mode=None)
    assert len(children(exp.proc.pid)) == (1 if separate else 0)
    text = exp.metrics()
    assert value(text, "nvidia_gpu_up", gpu=str(gpus - 1)) == 1
    assert (value(text, "gpu_exporter_collection_process_up") == 1) is separate


def test_driver_gpu_list_counts_gpus_without_nvml(tmp_path: Path) -> None:
    listed = tmp_path / "gpus"
    for n in range(3):
        (listed / f"0000:{n:02x}:00.0").mkdir(parents=True)
    assert gpus_on_node("nvml", 8, str(listed)) == 3
    assert gpus_on_node("nvml", 8, str(tmp_path / "no-driver")) is None
    assert gpus_on_node("sim", 8, str(listed)) == 8
    assert not wants_collection_process(None, 3)
    assert wants_collection_process(None, None)  # unknown: the mode that is safe at any count
    assert wants_collection_process(None, COLLECTION_PROCESS_ABOVE_GPUS + 1)
    assert wants_collection_process(True, 1) and not wants_collection_process(False, 64)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_gzip_is_one_member_in_both_formats(procs: ProcessManager, tmp_path: Path, openmetrics: bool) -> None:
    exp = start(procs, tmp_path)
    host, port = exp.url.removeprefix("http://").split(":")
    accept = {"Accept": "application/openmetrics-text;version=1.0.0"} if openmetrics else {}
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip", **accept})
    resp = conn.getresponse()
    packed = resp.read()
    conn.close()
    assert resp.getheader("Content-Encoding") == "gzip"
    assert ("openmetrics" in (resp.getheader("Content-Type") or "")) == openmetrics
    reader = zlib.decompressobj(31)
    body = reader.decompress(packed)
    assert reader.eof and not reader.unused_data  # one member, trailer (CRC, size) checked by zlib
    assert body == gzip.decompress(packed)
    assert b"gpu_exporter_snapshot_age_seconds " in body
    assert body.endswith(b"# EOF\n") == openmetrics
