"""The package installs as declared: metadata, dependencies, extras and console scripts."""

from __future__ import annotations

import configparser
import importlib
from importlib.metadata import distribution
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"gpu-exporter", "slurm-exporter", "runpod-exporter", "agent-webhook", "gpu-watchdog"}
REQUIRED_DEPS = {
    "prometheus-client",
    "nvidia-ml-py",
    "aiohttp",
    "pyyaml",
    "runpod",
    "ansible-core",
    "ansible-runner",
    "openai",
    "click",
}


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_pyproject_only_names_the_build_backend() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert "setuptools.build_meta" in text
    assert "[project]" not in text  # metadata lives in setup.cfg


def test_setup_cfg_declares_python_and_pinned_dependencies() -> None:
    cfg = _setup_cfg()
    assert cfg["options"]["python_requires"].strip() == ">=3.11"
    deps = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    names = {d.split("~")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower() for d in deps}
    assert REQUIRED_DEPS <= names
    for dep in deps:  # every dependency bounded, so a major release cannot break an install
        assert any(op in dep for op in ("~=", "<", "==")), dep
    extras = cfg["options.extras_require"]
    assert {"test", "bench"} <= set(extras)
    # The pyslurm backend was removed (never run, cannot build against Debian's Slurm 22.05).
    assert "pyslurm" not in cfg["options.extras_require"].get("slurm", "")


def test_console_scripts_are_installed_and_import() -> None:
    eps = {ep.name: ep for ep in distribution("gpu-watchdog").entry_points if ep.group == "console_scripts"}
    assert SCRIPTS <= set(eps)
    for name in SCRIPTS:
        module, _, attr = eps[name].value.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_layout_has_every_component_home() -> None:
    for part in (
        "exporters/gpu",
        "exporters/slurm",
        "exporters/runpod",
        "gpu_watchdog_core",
        "alert_rules",
        "ansible",
        "grafana",
        "agent_webhook",
        "pod-image",
        "tests",
        "bench",
        "docs",
    ):
        assert (REPO / part).is_dir(), part


def _packaged() -> list[str]:
    """The packages the wheel holds, found the way setup.cfg tells setuptools to find them."""
    from setuptools import find_packages

    include = [line.strip() for line in _setup_cfg()["options.packages.find"]["include"].splitlines() if line.strip()]
    return find_packages(where=str(REPO), include=include)


def test_the_wheel_holds_the_shared_core_and_every_subpackage() -> None:
    packaged = set(_packaged())
    tops = {"gpu_watchdog_core", "exporters", "agent_webhook"}
    assert tops <= packaged
    # Every directory with an __init__.py below a top-level package is in it, so no module is
    # importable in the checkout yet missing from the installed wheel.
    for top in tops:
        for init in (REPO / top).rglob("__init__.py"):
            name = ".".join(init.parent.relative_to(REPO).parts)
            assert name in packaged, name
    assert not {p for p in packaged if p.split(".")[0] not in tops | {"grafana"}}, packaged


def test_every_install_path_copies_every_top_level_package() -> None:
    # The pod image copies the sources in, and the gpu_watchdog role decides whether to
    # reinstall from a digest of them: a package left out of either installs stale or not at all.
    tops = sorted({p.split(".")[0] for p in _packaged()} - {"grafana"})
    dockerfile = (REPO / "pod-image" / "Dockerfile").read_text()
    ignore = (REPO / "pod-image" / "Dockerfile.dockerignore").read_text().split()
    digest = (REPO / "ansible" / "roles" / "gpu_watchdog" / "files" / "source-digest.py").read_text()
    image_inputs = (REPO / "scripts" / "pod_image.py").read_text()
    for top in tops:
        assert f"COPY {top} /opt/gpu-watchdog/src/{top}" in dockerfile, top
        assert f"!{top}/" in ignore, top
        assert f'"{top}"' in digest, top
        assert f'"{top}"' in image_inputs, top
