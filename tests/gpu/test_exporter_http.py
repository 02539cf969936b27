"""The real `gpu-exporter` console script over real HTTP, with faults injected through the CLI."""

from __future__ import annotations

import ssl
import subprocess
import time
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import trustme

from tests.gpu.conftest import Exporter, samples, script, sim_cli, value
from tests.gpu.test_backend import NO_DRIVER
from tests.harness.processes import LOOPBACK, ManagedProcess, free_port, http_get
from tests.harness.promstack import PrometheusServer

pytestmark = pytest.mark.slow

StartExporter = Callable[..., Exporter]


def test_metrics_openmetrics_and_promtool(start_exporter: StartExporter) -> None:
    exp = start_exporter()
    status, body = http_get(f"{exp.url}/metrics")
    assert status == 200
    text = body.decode()
    assert value(text, "nvidia_gpu_up", gpu="3") == 1
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    om = exp.metrics(headers={"Accept": "application/openmetrics-text;version=1.0.0"})
    assert om.rstrip().endswith("# EOF")
    assert "# TYPE nvidia_gpu_energy_joules counter" in om
    status, health = http_get(f"{exp.url}/healthz")
    assert status == 200 and b"4/4 GPUs up" in health


def test_lost_gpu_reported_within_one_interval(start_exporter: StartExporter) -> None:
    exp = start_exporter(interval=1.0)
    result = sim_cli(exp.faults, "inject", "--gpu", "2", "lost")
    assert result.returncode == 0, result.stderr
    text, waited = exp.wait_for(lambda t: value(t, "nvidia_gpu_up", gpu="2") == 0, 5, "nvidia_gpu_up{gpu=2} 0")
    assert waited <= exp.interval + 0.3, f"lost GPU took {waited:.2f}s to show (interval {exp.interval}s)"
    assert value(text, "nvidia_gpu_temperature_celsius", gpu="2") is None
    assert all(value(text, "nvidia_gpu_up", gpu=g) == 1 for g in ("0", "1", "3"))
    assert value(text, "nvidia_gpu_temperature_celsius", gpu="3") is not None
    status, health = http_get(f"{exp.url}/healthz")
    assert status == 200 and b"3/4 GPUs up (down: 2)" in health
    assert sim_cli(exp.faults, "clear", "--gpu", "2").returncode == 0
    exp.wait_for(lambda t: value(t, "nvidia_gpu_up", gpu="2") == 1, 5, "GPU 2 back")


def test_xid_and_process_through_cli(start_exporter: StartExporter, sleeper: ManagedProcess) -> None:
    exp = start_exporter(interval=0.5)
    before = time.time()
    assert sim_cli(exp.faults, "inject", "--gpu", "1", "xid", "79").returncode == 0
    assert sim_cli(exp.faults, "inject", "--gpu", "0", "process", str(sleeper.pid)).returncode == 0
    text, _ = exp.wait_for(
        lambda t: (
            value(t, "nvidia_gpu_xid_errors_total", gpu="1", xid="79") == 1
            and value(t, "nvidia_gpu_process_info", pid=str(sleeper.pid)) is not None
        ),
        5,
        "XID 79 and the process",
    )
    after = time.time()
    assert value(text, "nvidia_gpu_last_xid", gpu="1") == 79
    # The first-seen stamp the XID rule keys on: wall-clock time of the first event, same labels
    # as the counter, and only for codes this process has counted.
    first_seen = value(text, "nvidia_gpu_xid_first_seen_timestamp_seconds", gpu="1", xid="79")
    assert first_seen is not None and before <= first_seen <= after, (before, first_seen, after)
    label_sets = {
        name: sorted(labels for n, labels in samples(text) if n == name)
        for name in ("nvidia_gpu_xid_errors_total", "nvidia_gpu_xid_first_seen_timestamp_seconds")
    }
    assert label_sets["nvidia_gpu_xid_first_seen_timestamp_seconds"] == label_sets["nvidia_gpu_xid_errors_total"]
    assert len(label_sets["nvidia_gpu_xid_errors_total"]) == 1
    check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr
    assert value(text, "nvidia_gpu_last_xid", gpu="0") == 0
    assert value(text, "nvidia_gpu_process_info", gpu="0", pid=str(sleeper.pid), slurm_job_id="4242") == 1
    # More edits to the file re-read it; the XID is not delivered again.
    assert sim_cli(exp.faults, "inject", "--gpu", "3", "temperature", "88").returncode == 0
    text, _ = exp.wait_for(lambda t: value(t, "nvidia_gpu_temperature_celsius", gpu="3") == 88, 5, "temperature")
    assert value(text, "nvidia_gpu_xid_errors_total", gpu="1", xid="79") == 1
    # A repeat of the code counts, and keeps the first event's stamp.
    assert sim_cli(exp.faults, "inject", "--gpu", "1", "xid", "79").returncode == 0
    text, _ = exp.wait_for(
        lambda t: value(t, "nvidia_gpu_xid_errors_total", gpu="1", xid="79") == 2, 5, "the second XID 79"
    )
    assert value(text, "nvidia_gpu_xid_first_seen_timestamp_seconds", gpu="1", xid="79") == first_seen


def test_sim_cli_rejects_bad_values(tmp_path: Path) -> None:
    faults = tmp_path / "f.yml"
    bad = sim_cli(faults, "inject", "--gpu", "0", "throttle", "sleepy")
    assert bad.returncode == 2 and "throttle reason" in bad.stderr
    assert not faults.exists()
    ok = sim_cli(faults, "inject", "--gpu", "0", "ecc_dbe")
    assert ok.returncode == 0 and "injected ecc_dbe on GPU 0" in ok.stdout
    listed = sim_cli(faults, "list")
    assert "gpu 0: ecc_dbe" in listed.stdout
    faults.write_text("faults: {")
    broken = sim_cli(faults, "inject", "--gpu", "0", "lost")
    assert broken.returncode == 1 and "not valid YAML" in broken.stderr


def test_tls_and_basic_auth(start_exporter: StartExporter, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prom: '{hashed}'\n"
    )
    exp = start_exporter(web=str(web))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    good = {"Authorization": "Basic " + b64encode(b"prom:s3cret").decode()}
    exp.proc.wait_ready(lambda: http_get(f"{exp.url}/metrics", context=ctx, headers=good)[0] == 200)
    status, body = http_get(f"{exp.url}/metrics", context=ctx, headers=good)
    assert status == 200 and b"nvidia_gpu_up" in body
    wrong = {"Authorization": "Basic " + b64encode(b"prom:nope").decode()}
    assert http_get(f"{exp.url}/metrics", context=ctx, headers=wrong)[0] == 401
    assert http_get(f"{exp.url}/metrics", context=ctx)[0] == 401
    with pytest.raises(Exception, match=r"(?i)ssl|certificate"):
        http_get(f"{exp.url}/metrics", context=ssl.create_default_context(), headers=good)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([script("gpu-exporter"), *args], capture_output=True, text=True, timeout=60)


def test_bad_web_config_exits_2(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n")
    result = _run("--backend=sim", f"--listen={LOOPBACK}:{free_port()}", f"--web-config={web}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.crt" in lines[0]


def test_unknown_collector_exits_2() -> None:
    result = _run("--backend=sim", "--collectors=device,gpuburn")
    assert result.returncode == 2 and "gpuburn" in result.stderr


@pytest.mark.skipif(NO_DRIVER is None, reason="an NVIDIA driver is present: NVML loads here")
def test_nvml_backend_without_driver_exits_2() -> None:
    result = _run("--backend=nvml", f"--listen={LOOPBACK}:{free_port()}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "NVML" in lines[0] and "--backend sim" in lines[0]


def test_hung_gpu_marked_down_others_keep_reporting(start_exporter: StartExporter) -> None:
    exp = start_exporter("--nvml-timeout=0.3", interval=1.0)
    assert sim_cli(exp.faults, "inject", "--gpu", "0", "hang", "5").returncode == 0
    text, _ = exp.wait_for(lambda t: value(t, "nvidia_gpu_up", gpu="0") == 0, 5, "hung GPU 0 down")
    assert value(text, "gpu_exporter_nvml_timeouts_total", gpu="0") == 1
    assert all(value(text, "nvidia_gpu_up", gpu=g) == 1 for g in ("1", "2", "3"))
    # The next cycle still completes on time for the others: the snapshot keeps moving.
    first = value(text, "gpu_exporter_last_collect_timestamp_seconds")
    text, _ = exp.wait_for(
        lambda t: (value(t, "gpu_exporter_last_collect_timestamp_seconds") or 0) > (first or 0), 3, "next cycle"
    )
    assert value(text, "gpu_exporter_collect_duration_seconds") < 0.9
    assert value(text, "nvidia_gpu_temperature_celsius", gpu="1") is not None


def test_real_prometheus_scrapes_with_node_label(
    start_exporter: StartExporter, prometheus_factory: Callable[..., PrometheusServer]
) -> None:
    exp = start_exporter(interval=1.0)
    target = exp.url.removeprefix("http://")
    prom = prometheus_factory(
        extra_scrape_configs=[
            {"job_name": "gpu", "static_configs": [{"targets": [target], "labels": {"node": "gpu-node-1"}}]}
        ]
    )
    result = prom.wait_for('count(nvidia_gpu_up{job="gpu",node="gpu-node-1"} == 1) == 4', timeout=30)
    assert result
    assert prom.wait_for('up{job="gpu"} == 1')
    # Prometheus parsed every family (no scrape-time rejects): a counter reads as a counter.
    assert prom.wait_for('rate(nvidia_gpu_energy_joules_total{node="gpu-node-1"}[10s]) > 0', timeout=30)


def test_gzip_served_when_accepted_and_equal_to_plain(start_exporter: StartExporter) -> None:
    import gzip
    import http.client
    import zlib

    exp = start_exporter(gpus=8, interval=5.0)
    host, port = exp.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    resp = conn.getresponse()
    packed = resp.read()
    assert resp.status == 200 and resp.getheader("Content-Encoding") == "gzip"
    assert resp.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    # One gzip member (a reader that stops after the first, like curl's, still gets it all).
    reader = zlib.decompressobj(31)
    body = reader.decompress(packed)
    assert reader.eof and not reader.unused_data
    assert body == gzip.decompress(packed)
    conn.request("GET", "/metrics")
    plain_resp = conn.getresponse()
    plain = plain_resp.read()
    assert plain_resp.getheader("Content-Encoding") is None
    conn.close()

    def without_age(text: bytes) -> list[bytes]:
        return [line for line in text.splitlines() if not line.startswith(b"gpu_exporter_snapshot_age_seconds ")]

    assert without_age(body) == without_age(plain)  # same cycle, same series; the age is per request
    assert b"gpu_exporter_snapshot_age_seconds " in body
    assert len(packed) * 5 < len(plain)
    # q=0 refuses gzip
    status, refused = http_get(f"{exp.url}/metrics", headers={"Accept-Encoding": "gzip;q=0"})
    assert status == 200 and refused.startswith(b"# HELP")
