"""devstack's Prometheus config scrapes the sim gpu-exporter with the Slurm node label."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_gpu_target_carries_node_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVSTACK_RUN_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("devstack_under_test", REPO / "scripts" / "devstack.py")
    assert spec and spec.loader
    devstack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, devstack)  # dataclasses look their module up
    spec.loader.exec_module(devstack)
    gpu = next(s for s in devstack.SERVICES if s.name == "gpu-exporter")
    argv = gpu.argv()
    assert "--backend=sim" in argv and "--sim-gpus=8" in argv and "--interval=2" in argv
    assert f"--sim-faults={tmp_path / 'sim-faults.yml'}" in argv
    assert devstack.prometheus_argv() is not None
    config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "gpu")
    target = job["static_configs"][0]
    assert target["targets"] == ["127.0.0.1:9400"]
    assert target["labels"] == {"node": socket.gethostname().split(".")[0]}
